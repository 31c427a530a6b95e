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
    frame_stride: int = 20             # CORe50: keep one frame in this many
    labels: str = 'category'           # CORe50: category or object labels


IMAGE_FOLDER_FLAGS = frozenset({'images_dir', 'test_split', 'image_size', 'decode_on_device', 'skip_bad_images',
                                'cache_check'})
CORE50_FLAGS = frozenset({'images_dir', 'image_size', 'skip_bad_images', 'cache_check', 'frame_stride',
                          'core50_labels'})


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    help: str
    list_splits: Callable[[ListingOptions], data.SplitPair]
    class_increment: int                    # classes per increment (per batch in the class orderings) by default
    image_files: bool                       # read from an images folder: decoding workers and listings apply
    flags: frozenset = frozenset()          # the experiment.py flags only some datasets use that this one uses
    plastic_covariance: bool = True         # --streaming_update_sigma's default
    ordering: str = 'class_incremental'     # --ordering's default (see protocol.py)
    images_per_batch: Optional[int] = None  # iid and instance orderings; None: a tenth of the training images
    base_init: bool = True                  # whether the first batch is a base initialisation by default
    input_size: Optional[int] = None        # the network's input size when the data fixes it
    default_checkpoint: Optional[str] = None   # file name in image_files/ used when no weights are given
    default_weights: Optional[str] = None   # torchvision weights used when neither weights nor checkpoint is given
    paper_class_order: bool = False         # its label files give the paper's class order: warn without them


def list_digits(options):
    return data.digits_splits()


def list_core50(options):
    if options.decode_on_device:
        raise ValueError('decode_on_device is for JPEG image folders; CORe50 is PNG files')
    return data.core50_splits(options.images_dir, options.image_size, options.frame_stride, options.labels)


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
                 class_increment=100, image_files=True, flags=IMAGE_FOLDER_FLAGS, plastic_covariance=False,
                 default_checkpoint='imagenet_100_class_ckpt.pth', paper_class_order=True),
    DatasetEntry('imagefolder', 'your own train/ and val/ class folders', image_folder_lister('imagefolder'),
                 class_increment=10, image_files=True, flags=IMAGE_FOLDER_FLAGS),
    # The protocol of Hayes et al.'s CORe50 experiments: an ImageNet-1K-pretrained network, no base
    # initialisation, batches of 1,200 images or of 2 categories.
    DatasetEntry('core50', 'CORe50\'s core50_128x128/ folder (sessions s1 ... s11)', list_core50,
                 class_increment=2, image_files=True, flags=CORE50_FLAGS, ordering='iid', images_per_batch=1200,
                 base_init=False, default_weights='IMAGENET1K_V1'),
]}
