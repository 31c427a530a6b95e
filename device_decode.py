"""Decoding JPEG files in batches on the network's device (nvJPEG through torchvision on CUDA).

Sixteen CPU cores decode and resize a few thousand ImageNet JPEG files per second with PIL, less than a
modern GPU can push through ResNet-18. With ``--decode_on_device`` the DataLoader workers only read file
bytes; decoding, resizing and cropping happen on the device, a batch at a time. The resize is torchvision's
antialiased bilinear on tensors, which is close to PIL's but not bit-identical, so features (and the
feature cache key) differ slightly from the PIL path.
"""
import io

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms.v2 import functional as F

import data
from data import ImageList

JPEG_START = b'\xff\xd8'
START_OF_SCAN = b'\xff\xda'
END_OF_IMAGE = b'\xff\xd9'


def jpeg_is_complete(encoded):
    """False for a JPEG cut short: no end-of-image marker after its last start-of-scan.

    Entropy-coded data never holds the byte pair FF D9 (an FF there is followed by 00 or a restart marker),
    so the marker after the last scan is the file's end. Not JPEG: True (the decoder judges).
    """
    if not encoded.startswith(JPEG_START):
        return True
    last_scan = encoded.rfind(START_OF_SCAN)
    return last_scan != -1 and encoded.find(END_OF_IMAGE, last_scan) != -1


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


class EncodedImageList(ImageList):
    """Like ImageList, but item i is (the file's bytes as a uint8 tensor, i, ok); decoding comes later."""

    def __getitem__(self, index):
        try:
            with open(self.path(index), 'rb') as f:
                encoded = f.read()
        except OSError:
            encoded = b''
        if not encoded or not jpeg_is_complete(encoded) or not within_pixel_limit(encoded):
            return torch.zeros(0, dtype=torch.uint8), index, False
        return torch.frombuffer(bytearray(encoded), dtype=torch.uint8), index, True


def collate_encoded(batch):
    """Keep the variable-length byte tensors as a list."""
    encoded, indices, ok = zip(*batch)
    return list(encoded), torch.tensor(indices), torch.tensor(ok)


class BatchDecoder:
    """Turns a batch of encoded images into uint8 (B, 3, S, S) on ``device``: decode, resize the short side to
    S / 0.875, centre-crop S. Images that cannot be decoded get ok = False (and a zero image)."""

    def __init__(self, image_size, device):
        self.image_size = image_size
        self.resize = int(round(image_size / 0.875))
        self.device = torch.device(device)

    def _decode_one(self, encoded):
        try:
            if encoded[:2].tolist() == list(JPEG_START):
                return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            return decode_image(encoded, mode=ImageReadMode.RGB).to(self.device)
        except RuntimeError:
            return None

    def __call__(self, encoded, ok):
        ok = ok.clone()
        good = [i for i in range(len(encoded)) if ok[i]]
        try:        # one batched call for the usual case of a batch of JPEG files
            decoded = decode_jpeg([encoded[i] for i in good], mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:    # a PNG, a CMYK or a broken file among them: one at a time
            decoded = [self._decode_one(encoded[i]) for i in good]
        images = torch.zeros(len(encoded), 3, self.image_size, self.image_size, dtype=torch.uint8,
                             device=self.device)
        for i, image in zip(good, decoded):
            if image is None:
                ok[i] = False
                continue
            image = F.resize(image, [self.resize], antialias=True)
            images[i] = F.center_crop(image, [self.image_size, self.image_size])
        return images, ok
