"""Feature extraction across processes started by torchrun (one per GPU, on one machine or several).

Every process lists the dataset and plans the stream alike. Rank 0 finds the classes the feature cache lacks
and deals them out, balanced by image count; each process extracts its share into the shared cache on its
own device (cuda:LOCAL_RANK, or the CPU); then rank 0 streams SLDA from the cache and writes every output
while the others exit. The processes talk only through torch.distributed collectives (NCCL on CUDA, gloo
on the CPU), each with a timeout, so none waits forever.

A failure is said once, in one line: a process that fails while extracting is named by rank 0 alone (the
others exit normally), and an exchange that times out by the process that waited. That process exits with a
nonzero code, which torchrun reports after it with a table of the processes that failed.
"""
import os
from datetime import timedelta

import torch

from errors import InputError, ProjectError


class ProcessFailed(ProjectError, RuntimeError):
    """A process of the group failed; the message names its rank and the cause."""
    exit_code = 1


class CollectiveFailed(ProjectError, RuntimeError):
    """An exchange between the processes failed: this one waited longer than --dist_timeout for the others, or
    lost contact with them; the message says which."""
    hint = 'a rerun continues from the feature cache, which keeps every class extracted so far'
    exit_code = 1


class Group:
    """This process's place among the processes torchrun started: ``rank``, ``world_size``, ``local_rank``.
    With ``cuda`` each process uses GPU ``local_rank`` and NCCL; otherwise the CPU and gloo."""

    def __init__(self, timeout_seconds, cuda):
        import torch.distributed as dist
        self.dist = dist
        self.rank = int(os.environ['RANK'])
        self.world_size = int(os.environ['WORLD_SIZE'])
        self.local_rank = int(os.environ.get('LOCAL_RANK', 0))
        self.timeout_seconds = timeout_seconds
        backend = 'nccl' if cuda else 'gloo'
        if cuda:
            if self.local_rank >= torch.cuda.device_count():
                raise InputError(f'LOCAL_RANK {self.local_rank} needs a GPU of that number, but this machine has '
                                 f'{torch.cuda.device_count()}: start at most that many processes per machine')
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))
        # objects travel over gloo even when the extraction runs on NCCL: no GPU memory for them
        self.objects = dist.new_group(backend='gloo', timeout=timedelta(seconds=timeout_seconds)) \
            if backend == 'nccl' else None

    def broadcast(self, obj):
        """Rank 0's ``obj``, on every rank; raises CollectiveFailed when the exchange fails."""
        box = [obj]
        self._exchange(self.dist.broadcast_object_list, box, src=0)
        return box[0]

    def gather(self, obj):
        """Every rank's ``obj``, in rank order, on every rank; raises CollectiveFailed when the exchange fails."""
        boxes = [None] * self.world_size
        self._exchange(self.dist.all_gather_object, boxes, obj)
        return boxes

    def _exchange(self, collective, *args, **kwargs):
        # gloo reports a timeout, and a peer gone, as a RuntimeError whose traceback says nothing to the user
        try:
            collective(*args, group=self.objects, **kwargs)
        except RuntimeError as e:
            who = f'process {self.rank} of {self.world_size}'
            if 'timed out' in str(e).lower():
                raise CollectiveFailed(f'{who} waited more than --dist_timeout {self.timeout_seconds} seconds for the '
                                       f'others; raise it if their share of the work takes longer') from e
            raise CollectiveFailed(f'{who} lost contact with the others: {e}') from e

    def close(self):
        self.dist.destroy_process_group()


def started_by_torchrun():
    return int(os.environ.get('WORLD_SIZE', '1')) > 1 and 'RANK' in os.environ


def deal(sizes, world_size):
    """Deal items of ``sizes`` ({item: image count}) out to ``world_size`` processes: largest first, each to the
    process with the fewest images so far (the lowest rank on a tie). Returns a list per rank, deterministic."""
    shares, loads = [[] for _ in range(world_size)], [0] * world_size
    for item in sorted(sizes, key=lambda item: (-sizes[item], item)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(item)
        loads[rank] += sizes[item]
    return shares


def extract_shares(group, readers, files):
    """Fill the cache of ``readers`` ({split name: FeatureReader}) with the classes it lacks, each process its
    share. Returns the images each process extracted, in rank order. A process that fails makes rank 0 raise
    ProcessFailed naming its rank and the cause, while the others return as usual, so that the failure is said
    once. An exchange that fails raises CollectiveFailed."""
    missing = None
    if group.rank == 0:
        missing = {(name, label): int((reader.split.labels == label).sum())
                   for name, reader in readers.items()
                   for label in range(int(reader.split.labels.max()) + 1)
                   if reader.cache.read(reader.split, name, label) is None}
    missing = group.broadcast(missing)
    share = deal(missing, group.world_size)[group.rank]
    status = None
    try:
        for name, reader in readers.items():
            labels = sorted(label for split_name, label in share if split_name == name)
            if labels:
                reader.read_classes(labels)
        files.finish()                      # every cache file of this process is in place
    except Exception as e:      # noqa: BLE001 - reported to rank 0, then raised there
        hint = f' ({e.hint})' if isinstance(e, ProjectError) and e.hint else ''
        status = f'{type(e).__name__}: {e}{hint}'
    extracted = sum(reader.images_extracted for reader in readers.values())
    statuses = group.gather((status, extracted))
    for rank, (failure, _) in enumerate(statuses):
        if failure and group.rank == 0:
            raise ProcessFailed(f'process {rank} of {group.world_size} failed while extracting features: {failure}')
    return [count for _, count in statuses]
