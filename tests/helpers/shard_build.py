"""One process of a feature-cache build shared by WORLD processes (gloo on 127.0.0.1), for the crash tests:

    python tests/helpers/shard_build.py RANK WORLD PORT DATA_DIR CACHE_DIR [KILL_AFTER_BATCHES]

The backbone is random but seeded (the same weights in every process). With KILL_AFTER_BATCHES the process
SIGKILLs itself when it starts its next batch after that many; progress is recorded after every batch. Prints the
process's own build statistics as JSON.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import torch
    import torch.distributed as dist

    import project.data.feature_cache as feature_cache
    from project.data.scan import scan_utkface
    from project.models.backbone import build_backbone

    rank, world, port = (int(value) for value in sys.argv[1:4])
    data, cache = Path(sys.argv[4]), Path(sys.argv[5])
    kill_after = int(sys.argv[6]) if len(sys.argv) > 6 else None
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    feature_cache._FLUSH_EVERY_S = 0.0
    torch.manual_seed(123)
    backbone = build_backbone("none")
    if kill_after is not None:
        forward, batches = backbone.forward, []

        def forward_then_die(images):
            if len(batches) == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            batches.append(len(images))
            return forward(images)

        backbone.forward = forward_then_die
    builder = feature_cache.FeatureCacheBuilder(backbone, "32-true", cache, batch_size=8, num_workers=0,
                                                progress=False)
    builder.build(data, scan_utkface(data).items, 32, shard=feature_cache.Shard(rank, world, dist.barrier))
    print(json.dumps(builder.last_build_stats))
    dist.destroy_process_group()
