"""distributed.py: how classes are dealt out to the processes of a torchrun group."""
import distributed


def test_shares_are_balanced_by_image_count_and_deterministic():
    sizes = {('train', k): count for k, count in enumerate([50, 40, 30, 20, 10, 10])}
    shares = distributed.deal(sizes, 2)
    assert shares == distributed.deal(dict(reversed(list(sizes.items()))), 2)
    assert sorted(item for share in shares for item in share) == sorted(sizes)
    loads = [sum(sizes[item] for item in share) for share in shares]
    assert loads == [80, 80]
    assert distributed.deal(sizes, 3) == [[('train', 0), ('train', 5)], [('train', 1), ('train', 4)],
                                         [('train', 2), ('train', 3)]]
