"""Tests of device_decode.py: batched decoding on the network's device.

Batched decoding on the network's device (run here on the CPU; the same code runs nvJPEG on CUDA)."""
import io
import json

import numpy as np
import torch
from PIL import Image

import pytest

import data
import device_decode
import experiment
from conftest import make_checkpoint, setting
from device_decode import BatchDecoder, EncodedImageList, collate_encoded, jpeg_is_complete


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(seed, size=(500, 375)):
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize(size, Image.BILINEAR)
    return coarse


def test_jpeg_completeness():
    jpeg = encode(photo(0), 'JPEG', quality=90)
    progressive = encode(photo(1), 'JPEG', quality=90, progressive=True)
    assert jpeg_is_complete(jpeg) and jpeg_is_complete(progressive)
    assert not jpeg_is_complete(jpeg[:len(jpeg) // 2])
    assert not jpeg_is_complete(progressive[:len(progressive) - 100])
    assert jpeg_is_complete(encode(photo(2), 'PNG'))          # not a JPEG: left to the decoder


def test_batch_decoder_matches_pil_pipeline(tmp_path):
    files = {'a.JPEG': encode(photo(3), 'JPEG', quality=95), 'b.png': encode(photo(4, (300, 420)), 'PNG'),
             'c.JPEG': encode(photo(5).convert('L'), 'JPEG', quality=95), 'd.JPEG': b'not an image',
             'e.JPEG': encode(photo(6), 'JPEG')[:3000]}
    (tmp_path / 'images').mkdir()
    paths = []
    for name, content in files.items():
        (tmp_path / 'images' / name).write_bytes(content)
        paths.append(str(tmp_path / 'images' / name))
    split = (str(tmp_path), ['images'], ['\n'.join(files)], data.Preprocessing().at_size(64))
    encoded = EncodedImageList(*split)
    pil = data.ImageList(*split)
    assert [pil.describe(i) for i in range(len(paths))] == paths
    batch, indices, ok = collate_encoded([encoded[i] for i in range(len(paths))])
    assert ok.tolist() == [True, True, True, False, False]       # garbage and the truncated JPEG: on reading
    images, ok = BatchDecoder(split[3], 'cpu')(batch, ok)
    assert ok.tolist() == [True, True, True, False, False]
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 64, 64)
    for i in range(3):
        reference, _, good = pil[i]
        assert good
        difference = (images[i].float() - reference.float()).abs()
        assert difference.mean() < 2.0 and difference.max() < 40, paths[i]
    assert [pil[i][2] for i in range(5)] == [True, True, True, False, False]


def test_experiment_with_device_decoding(tmp_path, image_folder, capsys):
    root, _ = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    argv = ['--dataset', 'imagefolder', '--images_dir', root, '--base_init_ckpt', ckpt, '--class_increment', 3,
            '--image_size', 32, '--num_workers', 2, '--no-progress', '--amp', 'off']
    assert experiment.main([str(a) for a in argv + ['--save_dir', tmp_path / 'pil']]) == 0
    assert experiment.main([str(a) for a in argv + ['--save_dir', tmp_path / 'dev', '--decode_on_device']]) == 0
    pil = torch.load(tmp_path / 'pil' / 'slda_model_weights_final.pth', weights_only=True)
    dev = torch.load(tmp_path / 'dev' / 'slda_model_weights_final.pth', weights_only=True)
    assert torch.equal(pil['cK'], dev['cK'])
    assert (pil['muK'] - dev['muK']).abs().max() < 0.05 * pil['muK'].abs().max()
    config = json.loads((tmp_path / 'dev' / 'config.json').read_text())
    assert setting(config, 'decode_on_device') is True
    bad = root / 'val' / 'n01000003' / 'n01000003_0001.JPEG'
    bad.write_bytes(bad.read_bytes()[:200])
    capsys.readouterr()
    assert experiment.main([str(a) for a in argv + ['--save_dir', tmp_path / 'bad', '--decode_on_device']]) == 2
    assert f'cannot read image {bad}' in capsys.readouterr().err


def test_images_over_the_pixel_limit_are_bad_when_decoded_on_the_device(tmp_path, monkeypatch):
    (tmp_path / 'images').mkdir()
    (tmp_path / 'images' / 'big.JPEG').write_bytes(encode(photo(7, (50, 40)), 'JPEG'))      # 2,000 pixels
    (tmp_path / 'images' / 'small.JPEG').write_bytes(encode(photo(8, (30, 20)), 'JPEG'))    # 600 pixels
    monkeypatch.setattr(data, 'MAX_IMAGE_PIXELS', 1000)
    encoded = EncodedImageList(str(tmp_path), ['images'], ['big.JPEG\nsmall.JPEG'], data.Preprocessing().at_size(16))
    assert [encoded[i][2] for i in range(2)] == [False, True]


def decode_both_ways(tmp_path, files, size=48):
    """Each of ``files`` ({name: bytes}) read with --decode_on_device's classes and with the PIL path's ImageList:
    (images, ok) of BatchDecoder, [(image, ok)] of ImageList."""
    (tmp_path / 'images').mkdir()
    for name, content in files.items():
        (tmp_path / 'images' / name).write_bytes(content)
    split = (str(tmp_path), ['images'], ['\n'.join(files)], data.Preprocessing().at_size(size))
    batch, _, ok = collate_encoded([EncodedImageList(*split)[i] for i in range(len(files))])
    images, ok = BatchDecoder(split[3], 'cpu')(batch, ok)
    pil = data.ImageList(*split)
    return images, ok, [pil[i][::2] for i in range(len(files))]


def assert_close_to_pil(images, ok, pil, names):
    assert ok.tolist() == [good for _, good in pil] == [True] * len(names)
    for image, (reference, _), name in zip(images, pil, names):
        difference = (image.float() - reference.float()).abs()
        assert difference.mean() < 2.0 and difference.max() < 40, name


def test_every_format_the_pil_path_reads_is_read(tmp_path):
    gray16 = Image.fromarray((np.asarray(photo(9).convert('L'), dtype=np.uint16) * 40).clip(0, 65535)
                             .astype(np.uint16))
    files = {'a.bmp': encode(photo(10), 'BMP'), 'b.tif': encode(photo(11), 'TIFF'),
             'c.ppm': encode(photo(12), 'PPM'), 'd.webp': encode(photo(13), 'WEBP', lossless=True),
             'e.gif': encode(photo(14), 'GIF', save_all=True, append_images=[photo(15)]),     # animated
             'f.png': encode(gray16, 'PNG'),                                                   # 16 bits
             'g.JPEG': encode(photo(16), 'JPEG', quality=95)}
    images, ok, pil = decode_both_ways(tmp_path, files)
    assert_close_to_pil(images, ok, pil, list(files))


def test_a_jpeg_the_device_decoder_refuses_is_decoded_with_pil(tmp_path, monkeypatch):
    def device_decoder(encoded, **options):
        if isinstance(encoded, list) or encoded[-3] % 2:       # refuses batches and some files, as nvJPEG may
            raise RuntimeError('nvjpeg: unsupported')
        return real_decoder(encoded, **options)
    real_decoder = device_decode.decode_jpeg
    monkeypatch.setattr(device_decode, 'decode_jpeg', device_decoder)
    files = {f'{k}.JPEG': encode(photo(20 + k).convert('CMYK' if k % 2 else 'RGB'), 'JPEG', quality=90)
             for k in range(4)}
    images, ok, pil = decode_both_ways(tmp_path, files)
    assert_close_to_pil(images, ok, pil, list(files))


def test_a_batch_of_unreadable_images_only(tmp_path):
    files = {'a.JPEG': b'not an image', 'b.JPEG': encode(photo(30), 'JPEG')[:500]}
    images, ok, pil = decode_both_ways(tmp_path, files)
    assert ok.tolist() == [good for _, good in pil] == [False, False]
    assert images.shape == (2, 3, 48, 48) and not images.any()


def jpeg_with_thumbnail():
    """A JPEG whose EXIF segment holds a JPEG thumbnail (its own start-of-scan and end-of-image markers)."""
    thumbnail = encode(photo(41, (64, 48)), 'JPEG')
    exif = Image.Exif()
    exif[0x0112] = 1
    tiff = exif.tobytes()
    segment = b'Exif\x00\x00' + tiff
    main = encode(photo(40), 'JPEG', quality=90)
    app1 = b'\xff\xe1' + (len(segment) + len(thumbnail) + 2).to_bytes(2, 'big') + segment + thumbnail
    return main[:2] + app1 + main[2:]


@pytest.mark.parametrize('kind', ['trailer with markers', 'thumbnail in a segment', 'restart markers'])
def test_completeness_check_never_calls_a_valid_jpeg_bad(kind):
    if kind == 'trailer with markers':      # data after the end of the image, as some cameras append
        jpeg = encode(photo(42), 'JPEG', quality=90) + b'\xff\xda\x00\x08 camera trailer \xff\xd8'
    elif kind == 'thumbnail in a segment':
        jpeg = jpeg_with_thumbnail()
    else:
        jpeg = encode(photo(43), 'JPEG', quality=90, restart_marker_blocks=1)
    with Image.open(io.BytesIO(jpeg)) as image:
        image.load()        # the PIL path reads it
    assert jpeg_is_complete(jpeg)
    for cut in (len(jpeg) // 3, len(jpeg) // 2):
        shortened = (jpeg if kind != 'trailer with markers' else jpeg[:jpeg.index(b'\xff\xda\x00\x08 ')])[:cut]
        assert not jpeg_is_complete(shortened), cut
