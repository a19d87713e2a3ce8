"""Beyond one machine: embedding in shards across processes (:mod:`.shards`), their records
(:mod:`.records`), shard indexes (:mod:`.shard_index`) and the merge into one embedding and index (:mod:`.merge`).
"""
