"""PROFIT over ranks with ``torch.distributed``: parameters that are ``DTensor``s (FSDP2's
``fully_shard``) are stepped through their local shards, and the per-tensor sums the
projection, the clipping norm and the non-finite check need go through one all-gather per call
over the parameters' process group, added in rank order (so every rank takes bitwise the same
decision). Replicated parameters (DDP, or a ``Replicate`` placement) need no communication.
"""

import torch

try:  # torch >= 2.4
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch built without distributed
    dist = None
    DTensor = None

from ._errors import ProfitCollectiveError, ProfitConfigError


def is_dtensor(t):
    return DTensor is not None and isinstance(t, DTensor)


def local(t):
    """The tensor whose memory is stepped: a DTensor's local shard, or the tensor itself."""
    return t._local_tensor if is_dtensor(t) else t


class Ranks:
    """The ranks a sharded optimizer spans: its process group and which of its tensors are
    sharded (their sums are added over the ranks) or replicated (every rank's are the same)."""

    @classmethod
    def replicated(cls, group, n):
        """Ranks that hold every parameter whole (DDP): nothing to add up, only agreement."""
        r = cls.__new__(cls)
        r.group = group
        r.rank = dist.get_rank(group)
        r.world = dist.get_world_size(group)
        r.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
        r.any_sharded = False
        r.mask = torch.zeros(3 * n, dtype=torch.bool)
        return r

    def __init__(self, params):
        meshes = {p.device_mesh for p in params if is_dtensor(p)}
        if len(meshes) != 1:
            raise ProfitConfigError(f"DTensor parameters on {len(meshes)} device meshes: one mesh is supported")
        mesh = meshes.pop()
        if mesh.ndim != 1:
            raise ProfitConfigError(f"a {mesh.ndim}-D device mesh: PROFIT supports 1-D meshes (FSDP2's fully_shard)")
        self.group = mesh.get_group()
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(self.group) == "nccl" else torch.device("cpu")
        sharded = []
        for p in params:
            if not is_dtensor(p):
                sharded.append(False)
                continue
            (placement,) = p.placements
            if isinstance(placement, Shard):
                sharded.append(True)
            elif isinstance(placement, Replicate):
                sharded.append(False)
            else:
                raise ProfitConfigError(f"a parameter with placement {placement}: Shard or Replicate only")
        self.any_sharded = any(sharded)
        # Three sums per tensor: <delta, g>, |delta|^2, |g|^2.
        self.mask = torch.tensor(sharded, dtype=torch.bool).repeat_interleave(3)

    def all_reduce(self, data):
        """The engine's collective: the sums of sharded tensors added over the ranks in rank
        order (bitwise the same on every rank), the replicated ones kept."""
        mine = torch.frombuffer(bytearray(data), dtype=torch.float64)
        sent = mine.to(self.device)
        got = [torch.empty_like(sent) for _ in range(self.world)]
        dist.all_gather(got, sent, group=self.group)
        total = got[0].cpu().clone()
        for g in got[1:]:
            total += g.cpu()
        total = torch.where(self.mask, total, mine)
        return bytes(total.untyped_storage())

    def agree(self, ok):
        """Whether every rank can take this call (each checked its own input first): one
        all-reduce of a flag, so that no rank steps, or waits in the all-gather, while another
        refuses."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        return bool(flag.item())

    def refused(self):
        return ProfitCollectiveError(
            f"another rank refused this call (this is rank {self.rank} of {self.world}); nothing changed on any rank"
        )
