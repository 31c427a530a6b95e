"""Decoding JPEG files in batches on the network's device (nvJPEG through torchvision on CUDA).

Sixteen CPU cores decode and resize a few thousand ImageNet JPEG files per second with PIL, less than a
modern GPU can push through ResNet-18. With ``--decode_on_device`` the DataLoader workers only read the bytes of
JPEG files; decoding, resizing and cropping happen on the device, a batch at a time. The resize is torchvision's
antialiased bilinear on tensors, which is close to PIL's but not bit-identical, so features (and the
feature cache key) differ slightly from the PIL path.

Every image the PIL path reads is read here too: files of other formats (PNG, BMP, TIFF, GIF, ...) are decoded
by PIL in the workers exactly as on the PIL path, and a JPEG that the device's decoder refuses (nvJPEG and some
CMYK files, say) by PIL in the main process; only the resize and crop happen on the device for those.
"""
import io
import re

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

import data
from data import ImageList, interpolation_mode

JPEG_START = b'\xff\xd8\xff'        # start-of-image and a first marker, as PIL recognises a JPEG file
# A marker that ends a scan's entropy-coded data: FF followed by anything but a stuffed 00, a restart marker
# (D0-D7) or another fill FF.
MARKER = re.compile(rb'\xff[^\x00\xd0-\xd7\xff]')
END_OF_IMAGE = 0xD9
STANDALONE = 0x01       # TEM: a marker without a length field


def jpeg_is_complete(encoded):
    """False for a JPEG cut short: its segments and scans, walked from the start, end before an end-of-image
    marker.

    Each segment's length field skips its contents (an EXIF thumbnail holds markers of its own); a scan's
    entropy-coded data runs to the next marker other than a stuffed byte or a restart marker. Whatever follows
    the end-of-image marker (trailers some cameras append) is not looked at. Not JPEG: True (the decoder judges).
    """
    if not encoded.startswith(JPEG_START):
        return True
    position = len(JPEG_START) - 1
    while True:
        found = MARKER.search(encoded, position)
        if found is None:
            return False
        marker = encoded[found.start() + 1]
        if marker == END_OF_IMAGE:
            return True
        position = found.end()
        if marker != STANDALONE:
            if position + 2 > len(encoded):
                return False
            position += int.from_bytes(encoded[position:position + 2], 'big')


def within_pixel_limit(encoded):
    """False for an image of more than data.MAX_IMAGE_PIXELS pixels (read from its header; PIL decodes
    nothing here), or one whose header PIL cannot read (the decoder judges those)."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return image.width * image.height <= data.MAX_IMAGE_PIXELS
    except (OSError, ValueError, SyntaxError):
        return True
    except Image.DecompressionBombError:
        return False


def decode_with_pil(encoded):
    """The uint8 RGB pixels (3, H, W) of an image file's bytes as the PIL path (data.ImageList) decodes them, or
    None where it could not: not an image PIL reads, truncated, or more than data.MAX_IMAGE_PIXELS pixels."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            if image.width * image.height > data.MAX_IMAGE_PIXELS:
                return None
            pixels = np.array(data.rgb_image(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1)


class EncodedImageList(ImageList):
    """Like ImageList, but item i is (image, i, ok): for a JPEG file, its bytes as a 1-D uint8 tensor, decoded
    later on the device; for any other format, its uint8 RGB pixels (3, H, W), decoded here with PIL. Not
    readable: an empty tensor and ok False."""

    def __getitem__(self, index):
        try:
            with open(self.path(index), 'rb') as f:
                encoded = f.read()
        except OSError:
            encoded = b''
        if encoded.startswith(JPEG_START):
            if jpeg_is_complete(encoded) and within_pixel_limit(encoded):
                return torch.frombuffer(bytearray(encoded), dtype=torch.uint8), index, True
            pixels = None
        else:
            pixels = decode_with_pil(encoded)
        if pixels is None:
            return torch.zeros(0, dtype=torch.uint8), index, False
        return pixels, index, True


def collate_encoded(batch):
    """Keep the tensors, of varying sizes, as a list."""
    encoded, indices, ok = zip(*batch)
    return list(encoded), torch.tensor(indices), torch.tensor(ok)


class BatchDecoder:
    """Turns a batch from EncodedImageList into uint8 (B, 3, S, S) on ``device``: decode the JPEG files, resize
    the short side and centre-crop S as ``preprocessing`` (a data.Preprocessing) says. Images that cannot be
    decoded get ok = False (and a zero image)."""

    def __init__(self, preprocessing, device):
        self.image_size = preprocessing.image_size
        self.resize = preprocessing.resize_size
        self.interpolation = interpolation_mode(preprocessing.interpolation)
        self.device = torch.device(device)

    def _decode_one(self, encoded):
        """A JPEG's pixels on the device: decoded there, else by PIL as the PIL path would; None if neither can."""
        try:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pixels = decode_with_pil(encoded.numpy().tobytes())
            return None if pixels is None else pixels.to(self.device)

    def __call__(self, encoded, ok):
        ok = ok.clone()
        jpegs = [i for i in range(len(encoded)) if ok[i] and encoded[i].dim() == 1]
        decoded = {}
        if jpegs:
            try:        # one batched call for the usual case of a batch of JPEG files
                decoded = dict(zip(jpegs, decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB,
                                                      device=self.device)))
            except RuntimeError:    # a file the device's decoder refuses among them: one at a time
                decoded = {i: self._decode_one(encoded[i]) for i in jpegs}
        images = torch.zeros(len(encoded), 3, self.image_size, self.image_size, dtype=torch.uint8,
                             device=self.device)
        for i in range(len(encoded)):
            if not ok[i]:
                continue
            image = decoded[i] if i in decoded else encoded[i].to(self.device)     # pixels PIL decoded
            if image is None:
                ok[i] = False
                continue
            image = F.resize(image, [self.resize], self.interpolation, antialias=True)
            images[i] = F.center_crop(image, [self.image_size, self.image_size])
        return images, ok
