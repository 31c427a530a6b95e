"""The datasets experiment.py can stream, one entry each: how to list its splits, and its defaults.

Adding a dataset is one ``DatasetEntry`` in ``DATASETS`` plus its lister: a function taking ``ListingOptions``
and returning a ``data.SplitPair`` whose splits meet the ``data.Split`` contract.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import data


@dataclass
class ListingOptions:
    """What a lister may need; a lister uses what applies to it."""
    images_dir: Optional[str] = None
    image_size: int = 224
    test_split: str = 'val'
    decode_on_device: bool = False     # list files for decoding in batches on ``device_type``
    device_type: str = 'cpu'
    listing_dir: Optional[str] = None  # where a file listing may be kept between runs (see data.list_split)


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    help: str
    list_splits: Callable[[ListingOptions], data.SplitPair]
    class_increment: int                    # classes per increment by default
    image_files: bool                       # read from an images folder: decoding workers and listings apply
    plastic_covariance: bool = True         # --streaming_update_sigma's default
    input_size: Optional[int] = None        # the network's input size when the data fixes it
    default_checkpoint: Optional[str] = None   # file name in image_files/ used when no weights are given
    paper_class_order: bool = False         # its label files give the paper's class order: warn without them


def list_digits(options):
    return data.digits_splits()


def image_folder_lister(name):
    def list_image_folder(options):
        list_class, decoder = data.ImageList, 'PIL'
        if options.decode_on_device:
            from device_decode import EncodedImageList    # here: it imports torchvision, which cached reruns skip
            list_class, decoder = EncodedImageList, f'torchvision on {options.device_type}'
        return data.image_folder_splits(name, options.images_dir, options.image_size, options.test_split,
                                        list_class, decoder, options.listing_dir)
    return list_image_folder


DATASETS = {entry.name: entry for entry in [
    DatasetEntry('digits', "scikit-learn's bundled handwritten digits (no download)", list_digits,
                 class_increment=2, image_files=False, input_size=data.DIGITS_SIZE),
    # The original's defaults: a fixed covariance unless --streaming_update_sigma (its store-true flag).
    DatasetEntry('imagenet', 'ImageNet-1K as ImageFolder train/ and val/', image_folder_lister('imagenet'),
                 class_increment=100, image_files=True, plastic_covariance=False,
                 default_checkpoint='imagenet_100_class_ckpt.pth', paper_class_order=True),
    DatasetEntry('imagefolder', 'your own train/ and val/ class folders', image_folder_lister('imagefolder'),
                 class_increment=10, image_files=True),
]}
