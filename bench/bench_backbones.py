"""Feature extraction speed of frozen backbones on this machine, side by side in one run: images/s through the
network alone (no decoding), as experiment.py runs it (features.FeatureExtractor: eval(), inference_mode,
channels-last, bfloat16 autocast where the CPU or GPU has it), on random 224x224 images.

Networks are randomly initialised (speed does not depend on the weights); timm builds the ViTs.

    python bench/bench_backbones.py                        # ResNet-18, ViT-S/16, ViT-B/16 on the CPU
    python bench/bench_backbones.py --device cuda --batch_size 128
    python bench/bench_backbones.py --arch timm:vit_small_patch14_dinov2 --image_size 224
"""
import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import backbones  # noqa: E402
from features import FeatureExtractor, cpu_supports_bfloat16  # noqa: E402

NETWORKS = ['resnet18', 'timm:vit_small_patch16_224', 'timm:vit_base_patch16_224']


def images_per_second(extractor, batch_size, image_size, seconds):
    """The fastest of repeated timed batches, after one warm-up batch; (images/s, feature size)."""
    batch = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8)
    features = extractor(batch)
    fastest, spent = float('inf'), 0.0
    while spent < seconds:
        tick = time.perf_counter()
        extractor(batch)
        if extractor.device.type == 'cuda':
            torch.cuda.synchronize()
        took = time.perf_counter() - tick
        fastest, spent = min(fastest, took), spent + took
    return batch_size / fastest, features.shape[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', action='append', help=f'network(s) to time (default: {", ".join(NETWORKS)})')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--seconds', type=float, default=10, help='timed seconds per network')
    parser.add_argument('--amp', choices=('auto', 'on', 'off'), default='auto')
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = args.amp == 'on' or (args.amp == 'auto' and (device.type == 'cuda' or cpu_supports_bfloat16()))
    print(f'{device} ({torch.get_num_threads()} threads), {"bfloat16 autocast" if amp else "float32"}, batches '
          f'of {args.batch_size} {args.image_size}x{args.image_size} images, fastest batch of {args.seconds:g} s')
    rows = []
    for arch in args.arch or NETWORKS:
        preprocessing = backbones.default_preprocessing(arch, None).at_size(args.image_size)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')     # random initialisation, on purpose
            extractor = FeatureExtractor(arch, device=device, amp=amp, preprocessing=preprocessing).load()
        rate, dim = images_per_second(extractor, args.batch_size, args.image_size, args.seconds)
        rows.append((arch, dim, rate))
        del extractor
    base = rows[0][2]
    print(f'| network | feature size | images/s | relative to {rows[0][0]} |\n|---|---|---|---|')
    for arch, dim, rate in rows:
        print(f'| {arch} | {dim} | {rate:,.1f} | {rate / base:.2f}x |')


if __name__ == '__main__':
    main()
