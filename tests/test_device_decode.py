"""Batched decoding on the network's device (run here on the CPU; the same code runs nvJPEG on CUDA)."""
import io
import json

import numpy as np
import torch
from PIL import Image

import data
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
    split = (str(tmp_path), ['images'], ['\n'.join(files)], 64)
    encoded = EncodedImageList(*split)
    pil = data.ImageList(*split)
    assert [pil.describe(i) for i in range(len(paths))] == paths
    batch, indices, ok = collate_encoded([encoded[i] for i in range(len(paths))])
    assert ok.tolist() == [True, True, True, True, False]        # the truncated JPEG is caught on reading
    images, ok = BatchDecoder(64, 'cpu')(batch, ok)
    assert ok.tolist() == [True, True, True, False, False]       # garbage is caught by the decoder
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
    encoded = EncodedImageList(str(tmp_path), ['images'], ['big.JPEG\nsmall.JPEG'], 16)
    assert [encoded[i][2] for i in range(2)] == [False, True]
