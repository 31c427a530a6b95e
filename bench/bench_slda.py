"""StreamingLDA against the original's per-sample rule and the hardware's limits, at several sizes, in one run.

For each feature dimension d, class count C and covariance (plastic or fixed), in a fresh process (the memory
allocator's state left by one method changes the speed of the next by up to 2x here), on the same random stream:

- the hardware limits: the GEMM-only rate (samples/s at which the batched plastic update's one matrix product
  R^T diag(w) R runs alone, on a pass of ``FIT_CHUNK_ROWS`` rows) and the addr-only rate (one in-place rank-1
  update of a d x d matrix per sample, the per-sample plastic rule's unavoidable cost);
- ours: ``fit`` on the whole stream (batched), on the same rows with each class's together (by class, classes in a
  shuffled order, as a class-incremental batch arrives), and ``fit(x, y)`` one sample per call;
- the original's rule, one sample per call as the original's ``fit`` writes it (README, "Differences from the
  original"): the sample and label moved and reshaped, Sigma <- (t Sigma + (t / (t + 1)) r r^T) / (t + 1) into a
  new matrix, mu_k <- mu_k + (z - mu_k) / (c_k + 1) through a label tensor.

Then prediction at d = 512: scoring 10,000 features right after an update, ours against the original's predict
(pseudo-inverse of the shrunk covariance, W = Lambda M and b per call, one product per test batch), the product
X W alone (what every method must compute: the floor), and the
classifier's solve in float64 (ours) against float32, with the float32 solve's largest error.

Avalanche's StreamingLDA strategy (avalanche-lib, installed apart from the project by bench/setup_avalanche.sh),
when its folder is there: its ``fit`` one sample per call as its training loop calls it (a (1, d) row and a (1,)
label), beside the original's rule and on as many samples, and its ``predict`` beside the original's. A one-line
check first compares its class means, counts and covariance after a few samples with ours.

Every figure is the fastest of ``--repeats`` runs.

    python bench/bench_slda.py                                # about 5 minutes on 2 CPU cores
    python bench/bench_slda.py --dims 512 --classes 1000      # one size
    python bench/bench_slda.py --device cuda                  # on a GPU
    bash bench/setup_avalanche.sh                             # once, for Avalanche's columns
"""
import argparse
import multiprocessing
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import slda_model  # noqa: E402
from slda_model import StreamingLDA  # noqa: E402


def original_update(model, x, y, t):
    """One sample, written as the original's ``fit`` is: the sample and label moved to the device, made 2-D
    and 1-D, a fresh covariance tensor per step, the class row updated through a label tensor. t is the
    number of updates so far (a Python int there, so no device sync)."""
    x = x.to(model.device)
    y = y.long().to(model.device)
    if len(x.shape) == 1:
        x = x.unsqueeze(0)
    if len(y.shape) == 0:
        y = y.unsqueeze(0)
    with torch.no_grad():
        if model.streaming_update_sigma:
            x_minus_mu = x - model.muK[y]
            mult = torch.matmul(x_minus_mu.transpose(1, 0), x_minus_mu)
            delta = mult * t / (t + 1)
            model.Sigma = (t * model.Sigma + delta) / (t + 1)
        model.muK[y, :] += (x - model.muK[y, :]) / (model.cK[y] + 1).unsqueeze(1)
        model.cK[y] += 1
        model.num_updates += 1


@torch.no_grad()
def original_predict(model, X, test_batch_size=1024):
    """Scores as the original's ``predict`` computes them on every call: Lambda from the pseudo-inverse, then
    W = Lambda M, c = mu^T Lambda mu / 2, and X W - c per test batch into an (n, C) matrix."""
    eye = torch.eye(model.input_shape, device=model.device)
    Lambda = torch.pinverse((1 - model.shrinkage_param) * model.Sigma + model.shrinkage_param * eye)
    M = model.muK.transpose(1, 0)
    W = torch.matmul(Lambda, M)
    c = 0.5 * torch.sum(M * W, dim=0)
    scores = torch.empty((X.shape[0], model.num_classes))
    for start in range(0, X.shape[0], test_batch_size):
        scores[start:start + test_batch_size] = torch.matmul(X[start:start + test_batch_size], W) - c
    return scores


def avalanche_class(folder):
    """Avalanche's StreamingLDA strategy class, imported from ``folder`` (bench/setup_avalanche.sh). The folder goes
    after the project's site-packages on the path, so Avalanche runs on the project's torch."""
    if folder not in sys.path:
        sys.path.append(folder)
    with warnings.catch_warnings():
        # bs4 and qpsolvers, imported by Avalanche's package, warn about optional packages its SLDA never uses
        warnings.simplefilter('ignore')
        from avalanche.training.supervised.deep_slda import StreamingLDA as AvalancheSLDA
    return AvalancheSLDA


def avalanche_model(folder, d, classes, plastic, device):
    """Avalanche's strategy with an identity for the feature extractor, since the bench calls its ``fit`` and
    ``predict`` on features directly; evaluator=None leaves out its loggers and metrics, which only its training
    loop calls."""
    strategy = avalanche_class(folder)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')     # "No loggers specified": none is wanted
        return strategy(slda_model=torch.nn.Identity(), criterion=torch.nn.CrossEntropyLoss(), input_size=d,
                        num_classes=classes, streaming_update_sigma=plastic, device=device, evaluator=None)


def avalanche_check(args, d=512, classes=10, n=100):
    """Largest differences, relative to the largest entry, of the class means and the (plastic) covariance after
    the same n samples one per call: Avalanche's from ours, and each from ours in float64 (the rounding that
    float32 itself accumulates over n updates); and whether the counts are equal."""
    device = torch.device(args.device)
    X, y = (tensor.to(device) for tensor in random_stream(n, d, classes))
    ours = StreamingLDA(d, classes, device=device)
    exact = StreamingLDA(d, classes, device=device, dtype=torch.float64)
    theirs = avalanche_model(args.avalanche, d, classes, True, device)
    for i in range(n):
        ours.fit(X[i], int(y[i]))
        exact.fit(X[i].double(), int(y[i]))
        theirs.fit(X[i].unsqueeze(0), y[i].unsqueeze(0))

    def relative(a, b):
        return max(((a.muK.double() - b.muK.double()).abs().max() / b.muK.double().abs().max()).item(),
                   ((a.Sigma.double() - b.Sigma.double()).abs().max() / b.Sigma.double().abs().max()).item())

    import avalanche        # on the path since avalanche_model
    return {'version': avalanche.__version__, 'theirs from ours': relative(theirs, ours),
            'ours from float64': relative(ours, exact), 'theirs from float64': relative(theirs, exact),
            'counts equal': bool(torch.equal(theirs.cK.long(), ours.cK))}


def random_stream(n, d, num_classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, d, generator=generator)
    y = torch.randint(0, num_classes, (n,), generator=generator)
    X = centres[y] + torch.randn(n, d, generator=generator)
    return X, y


def fastest(run, repeats, device, setup=lambda: None):
    """The fastest of ``repeats`` runs of ``run(setup())`` on ``device``, in seconds."""
    best = float('inf')
    for _ in range(repeats):
        state = setup()
        synchronize(device)
        tick = time.perf_counter()
        run(state)
        synchronize(device)
        best = min(best, time.perf_counter() - tick)
    return best


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def measure_fit(d, classes, plastic, args):
    """{name: samples/s} of the hardware limits, ours (batched, one per call), the original's rule and
    Avalanche's update (when args.avalanche names its folder)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    chunk = slda_model.FIT_CHUNK_ROWS.get(device.type, slda_model.FIT_CHUNK_ROWS['cuda'])
    R, out = torch.randn(chunk, d, device=device), torch.empty(d, d, device=device)
    Sigma, r = torch.eye(d, device=device), torch.randn(d, device=device)
    batched_n, per_call_n = args.batched_samples, args.per_call_samples
    original_n = per_call_n if not plastic or device.type != 'cpu' else max(20, min(per_call_n, int(2e9 / d ** 3)))
    X, y = (tensor.to(device) for tensor in random_stream(max(batched_n, per_call_n), d, classes))
    labels = y.tolist()
    # The same rows with each class's together, classes in a shuffled order: a class-incremental batch
    by_class = torch.argsort(torch.randperm(classes, device=device)[y[:batched_n]], stable=True)
    X_runs, y_runs = X[:batched_n][by_class], y[:batched_n][by_class]

    def model():
        return StreamingLDA(d, classes, streaming_update_sigma=plastic, device=device)

    def per_call(m):
        for i in range(per_call_n):
            m.fit(X[i], labels[i])

    def original(m):
        for i in range(original_n):
            original_update(m, X[i], y[i], i)

    def avalanche(m):
        for i in range(original_n):
            m.fit(X[i].unsqueeze(0), y[i].unsqueeze(0))

    rates = {
        'GEMM-only': chunk / fastest(lambda _: torch.mm(R.T, R, out=out), args.repeats, device),
        'addr-only': 1000 / fastest(lambda _: [Sigma.addr_(r, r, beta=0.5, alpha=0.25) for _ in range(1000)],
                                    args.repeats, device),
        'batched fit': batched_n / fastest(lambda m: m.fit(X[:batched_n], y[:batched_n]), args.repeats, device,
                                           model),
        'batched, class runs': batched_n / fastest(lambda m: m.fit(X_runs, y_runs), args.repeats, device, model),
        'one per call': per_call_n / fastest(per_call, args.repeats, device, model),
        'original': original_n / fastest(original, args.repeats, device, model),
    }
    if args.avalanche:
        # as many samples as the original's rule: Avalanche's update is the same rule, with a new Sigma per sample
        rates['avalanche'] = original_n / fastest(avalanche, args.repeats, device, lambda: avalanche_model(
            args.avalanche, d, classes, plastic, device))
    return rates


def measure_predict(d, classes, args):
    """Seconds to score 10,000 features right after an update, ours, the original's and Avalanche's (when
    args.avalanche names its folder); the classifier's solve in float64 and float32 and the float32 solve's
    largest relative error."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    X, y = (tensor.to(device) for tensor in random_stream(max(args.batched_samples, 2 * classes, 10_000), d, classes))
    model = StreamingLDA(d, classes, device=device).fit(X, y)
    test = X[:10_000]

    def after_update():
        model.fit(X[0], int(y[0]))       # one more sample: the next predict computes its classifier afresh

    ours = fastest(lambda _: model.predict(test), args.repeats, device, after_update)
    original = fastest(lambda _: original_predict(model, test), args.repeats, device)
    avalanche = None
    if args.avalanche:
        theirs = avalanche_model(args.avalanche, d, classes, True, device)
        theirs.muK, theirs.cK, theirs.Sigma = model.muK.clone(), model.cK.float(), model.Sigma.clone()
        theirs.num_updates = int(model.num_updates)

        def their_update():
            # its predict keeps its pseudo-inverse until the next update: one more sample makes it compute afresh
            theirs.fit(X[:1], y[:1])

        avalanche = fastest(lambda _: theirs.predict(test), args.repeats, device, their_update)
    _, W, _ = model._classifier()
    product = torch.empty(len(test), W.shape[1], device=device)
    gemm = fastest(lambda _: torch.mm(test, W, out=product), args.repeats, device)
    shrunk, _ = model.shrunk_covariance()
    M = model.muK.double().T
    L = torch.linalg.cholesky(shrunk)
    solve64 = fastest(lambda _: torch.cholesky_solve(M, L), args.repeats, device)
    M32, L32 = M.float(), L.float()
    solve32 = fastest(lambda _: torch.cholesky_solve(M32, L32), args.repeats, device)
    W64 = torch.cholesky_solve(M, L)
    error = ((torch.cholesky_solve(M32, torch.linalg.cholesky(shrunk.float())).double() - W64).abs().max()
             / W64.abs().max()).item()
    return {'ours': ours, 'original': original, 'avalanche': avalanche, 'gemm': gemm, 'solve64': solve64,
            'solve32': solve32, 'error32': error}


def in_fresh_process(function, *call_args):
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        return pool.apply(function, call_args)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dims', type=int, nargs='+', default=[512, 768, 2048])
    parser.add_argument('--classes', type=int, nargs='+', default=[1000, 10000])
    parser.add_argument('--predict_classes', type=int, nargs='*', default=[1000, 10000, 21841],
                        help='class counts of the prediction measurement, at d = 512')
    parser.add_argument('--batched_samples', type=int, default=20_000)
    parser.add_argument('--per_call_samples', type=int, default=2_000,
                        help='samples of the one-per-call runs (the original\'s plastic rule gets fewer at large d)')
    parser.add_argument('--repeats', type=int, default=3, help='runs of each; the fastest is reported')
    parser.add_argument('--device', default='cpu', help='where the model and the stream live (cpu, cuda)')
    parser.add_argument('--avalanche', default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                            '.avalanche'),
                        help='the folder bench/setup_avalanche.sh installed avalanche-lib into (default '
                             'bench/.avalanche); Avalanche is left out when it is not there, or with an empty string')
    args = parser.parse_args()
    wait_policy = os.environ.get('OMP_WAIT_POLICY', 'unset')
    print(f'{args.device}, {torch.get_num_threads()} CPU threads, OMP_WAIT_POLICY={wait_policy}, '
          f'torch {torch.__version__}; samples/s, fastest of {args.repeats}; each size in a fresh process')
    if args.avalanche and not os.path.isdir(os.path.join(args.avalanche, 'avalanche')):
        print(f'Avalanche not measured: no avalanche-lib in {args.avalanche} (bash bench/setup_avalanche.sh '
              f'installs it there)')
        args.avalanche = None
    if args.avalanche:
        check = in_fresh_process(avalanche_check, args)
        print(f'Avalanche {check["version"]} against ours after the same 100 samples one per call (d = 512, C = 10, '
              f'plastic): means and covariance within {check["theirs from ours"]:.1e} of the largest entry '
              f'(ours from float64: {check["ours from float64"]:.1e}, Avalanche\'s: '
              f'{check["theirs from float64"]:.1e}), counts {"equal" if check["counts equal"] else "DIFFERENT"}')
    their_head = f' {"avalanche":>9s}' if args.avalanche else ''
    their_ratio_head = f' {"per call/avalanche":>18s}' if args.avalanche else ''
    print(f'{"d":>5s} {"C":>6s} {"covariance":>10s} {"GEMM-only":>10s} {"addr-only":>10s} {"batched":>10s} '
          f'{"by class":>10s} {"per call":>9s} {"original":>9s}{their_head} | {"batched/GEMM":>12s} '
          f'{"batched/per call":>16s} {"per call/original":>17s}{their_ratio_head}')
    for d in args.dims:
        for classes in args.classes:
            for plastic in (True, False):
                rates = in_fresh_process(measure_fit, d, classes, plastic, args)
                gemm_share = f'{rates["batched fit"] / rates["GEMM-only"]:.0%}' if plastic else '-'
                their_rate = f' {rates["avalanche"]:9,.0f}' if args.avalanche else ''
                their_ratio = f' {rates["one per call"] / rates["avalanche"]:17.1f}x' if args.avalanche else ''
                print(f'{d:5d} {classes:6d} {"plastic" if plastic else "fixed":>10s} {rates["GEMM-only"]:10,.0f} '
                      f'{rates["addr-only"]:10,.0f} {rates["batched fit"]:10,.0f} '
                      f'{rates["batched, class runs"]:10,.0f} {rates["one per call"]:9,.0f} '
                      f'{rates["original"]:9,.0f}{their_rate} | {gemm_share:>12s} '
                      f'{rates["batched fit"] / rates["one per call"]:15.1f}x '
                      f'{rates["one per call"] / rates["original"]:16.1f}x{their_ratio}', flush=True)
    print('\nscoring 10,000 features right after an update, d = 512 (seconds):')
    for classes in args.predict_classes:
        result = in_fresh_process(measure_predict, 512, classes, args)
        theirs = (f', Avalanche\'s predict {result["avalanche"]:.3f} (ours is '
                  f'{result["avalanche"] / result["ours"]:.2f}x faster)' if args.avalanche else '')
        print(f'  C = {classes:5d}: ours {result["ours"]:.3f}, the original\'s predict {result["original"]:.3f} '
              f'(ours is {result["original"] / result["ours"]:.2f}x faster){theirs}; the product X W alone '
              f'{result["gemm"]:.3f}; classifier solve float64 '
              f'{result["solve64"] * 1000:.0f} ms, float32 {result["solve32"] * 1000:.0f} ms (largest error '
              f'{result["error32"]:.1e} of the largest weight)', flush=True)


if __name__ == '__main__':
    main()
