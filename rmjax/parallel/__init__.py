"""Meshes, logical-axis sharding rules and the sharded-step pattern."""

from rmjax.parallel.mesh import MeshConfig, make_mesh
from rmjax.parallel.sharding import (
                                     compile_step,
                                     data_parallel_size,
                                     init_sharded,
                                     shard_batch,
                                     shard_model,
                                     shard_tree,
                                     tree_shardings,
)
