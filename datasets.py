"""The datasets experiment.py can stream, one entry each: its options, how to list its splits, and its defaults.

Adding a dataset is one ``DatasetEntry`` in ``DATASETS``: a ``Settings`` subclass declaring the options it takes
(their flags come with them), and a lister that receives those options whole and returns a ``data.SplitPair``
whose splits meet the ``data.Split`` contract.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import cifar
import data
import split_lists
from options import Settings, at_least, option

@dataclass(frozen=True)
class NoOptions(Settings):
    """A dataset that takes no options (the digits). The class attributes are what other code reads of any
    dataset's options; a dataset that declares them as fields takes them from the command line."""
    images_dir = None
    image_size = None
    skip_bad_images = False
    cache_check = 'sizes'
    decode_on_device = False


@dataclass(frozen=True)
class FolderOptions(NoOptions):
    """Options of every dataset read from a folder."""
    images_dir: Optional[str] = option(None, 'the dataset\'s folder (image folders: train/ and val/ with a '
                                             'sub-folder per class, or the class folders with --split_file; core50: '
                                             'core50_128x128/; cifar100, cifar10: the folder of the python version '
                                             'release or the one holding it)', metavar='DIR')
    image_size: Optional[int] = option(None, 'network input size in pixels (default: the network\'s own, 224 for '
                                             'torchvision\'s); image folders are resized in the network\'s crop '
                                             'ratio (224 / 256 for torchvision\'s) and centre-cropped, core50 and '
                                             'cifar images resized to size x size', metavar='N', check=at_least(1))


@dataclass(frozen=True)
class ImageFilesOptions(FolderOptions):
    """Options of every dataset read from image files."""
    skip_bad_images: bool = option(False, 'skip unreadable images (listed in summary.json) instead of stopping',
                                   changes_results=False)
    cache_check: str = option('sizes', 'how cached features are matched to image files: sizes checks every '
                                       'file\'s name and size (a stat per file, a few seconds for ImageNet); '
                                       'listing trusts folder modification times, for the names and for a file '
                                       'listing kept in the cache, and misses files rewritten in place',
                              choices=('sizes', 'listing'), changes_results=False)


@dataclass(frozen=True)
class ImageFolderOptions(ImageFilesOptions):
    test_split: str = option('val', 'name of the test folder beside train/', metavar='NAME')
    decode_on_device: bool = option(False, 'decode JPEG files in batches on the network\'s device (nvJPEG on CUDA) '
                                           'instead of with PIL in the workers, which then only read files')
    split_file: Optional[str] = option(None, 'a text file giving the split, for datasets published as a list '
                                             '(ImageNet-R, CUB-200): a line per image, its path relative to '
                                             '--images_dir and train or test; the class is the path\'s top folder. '
                                             'Replaces the train/ and --test_split folders', metavar='FILE')


@dataclass(frozen=True)
class CORe50Options(ImageFilesOptions):
    frame_stride: int = option(20, 'keep frames N/2, N/2 + N, ... of each clip (20: one frame per second, '
                                   '10, 30, ..., 290)', metavar='N', check=at_least(1))
    class_labels: str = option('category', 'the 10 categories or the 50 objects as classes',
                               flags=('--core50_labels',), choices=('category', 'object'))


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    help: str
    # (options, preprocessing (data.Preprocessing), listing_dir=None, device_type='cpu') -> SplitPair
    list_splits: Callable[..., data.SplitPair]
    options: type = NoOptions               # the Settings subclass of the options it takes
    class_increment: int = 10               # classes per batch of the class orderings by default
    plastic_covariance: bool = True         # the covariance's default
    ordering: str = 'class_incremental'     # the ordering's default (see protocol.ORDERINGS)
    images_per_batch: Optional[int] = None  # iid and instance orderings; None: a tenth of the training images
    base_init: bool = True                  # whether the first batch is a base initialisation by default
    input_size: Optional[int] = None        # the network's input size when the data fixes it
    square_images: bool = False             # resized square to the input size, no crop (data.Preprocessing.square)
    default_checkpoint: Optional[str] = None   # file name in image_files/ used when no weights are given
    default_weights: Optional[str] = None   # torchvision weights used when neither weights nor checkpoint is given
                                            # (timm models: their tag's)
    paper_class_order: bool = False         # its label files give the paper's class order: warn without them

    @property
    def image_files(self):
        """Read from image files: decoding workers and file listings apply."""
        return issubclass(self.options, ImageFilesOptions)


def list_digits(options, preprocessing, listing_dir=None, device_type='cpu'):
    return data.digits_splits()


def list_core50(options, preprocessing, listing_dir=None, device_type='cpu'):
    return data.core50_splits(options.images_dir, preprocessing, options.frame_stride, options.class_labels)


def image_folder_lister(name):
    def list_image_folder(options, preprocessing, listing_dir=None, device_type='cpu'):
        list_class, decoder = data.ImageList, 'PIL'
        if options.decode_on_device:
            from device_decode import EncodedImageList    # here: it imports torchvision, which cached reruns skip
            list_class, decoder = EncodedImageList, f'torchvision on {device_type}'
        if options.split_file:
            return split_lists.split_file_splits(name, options.images_dir, options.split_file, preprocessing,
                                                 list_class, decoder)
        return data.image_folder_splits(name, options.images_dir, preprocessing, options.test_split,
                                        list_class, decoder, listing_dir)
    return list_image_folder


def cifar_lister(name):
    def list_cifar(options, preprocessing, listing_dir=None, device_type='cpu'):
        return cifar.cifar_splits(name, options.images_dir, preprocessing)
    return list_cifar


DATASETS = {entry.name: entry for entry in [
    DatasetEntry('digits', "scikit-learn's bundled handwritten digits (no download)", list_digits,
                 class_increment=2, input_size=data.DIGITS_SIZE, square_images=True),
    # The original's defaults: a fixed covariance unless --streaming_update_sigma (its store-true flag).
    DatasetEntry('imagenet', 'ImageNet-1K as ImageFolder train/ and val/', image_folder_lister('imagenet'),
                 ImageFolderOptions, class_increment=100, plastic_covariance=False,
                 default_checkpoint='imagenet_100_class_ckpt.pth', paper_class_order=True),
    DatasetEntry('imagefolder', 'your own train/ and val/ class folders', image_folder_lister('imagefolder'),
                 ImageFolderOptions),
    # The protocol of Hayes et al.'s CORe50 experiments: an ImageNet-1K-pretrained network, no base
    # initialisation, batches of 1,200 images or of 2 categories.
    DatasetEntry('core50', 'CORe50\'s core50_128x128/ folder (sessions s1 ... s11)', list_core50, CORe50Options,
                 class_increment=2, ordering='iid', images_per_batch=1200, base_init=False,
                 default_weights='IMAGENET1K_V1', square_images=True),
    # The class-incremental benchmarks of today's papers ("B0 Inc10" on CIFAR-100): an ImageNet-1K-pretrained
    # network on the 32x32 images resized to its input.
    DatasetEntry('cifar100', 'CIFAR-100\'s python version (cifar-100-python/: train, test, meta)',
                 cifar_lister('cifar100'), FolderOptions, class_increment=10, default_weights='IMAGENET1K_V1',
                 square_images=True),
    DatasetEntry('cifar10', 'CIFAR-10\'s python version (cifar-10-batches-py/)', cifar_lister('cifar10'),
                 FolderOptions, class_increment=2, default_weights='IMAGENET1K_V1', square_images=True),
]}
