"""The log: durable partitions (storage), a Kafka-protocol broker, and a small client.

Reading order: `batch` (the v2 record batch on the wire and on disk) → `index`,
`segment`, `partition`, `storage` (the files) → `producers` (idempotence) →
`group_state`, `rebalance`, `groups` (consumer groups, sans-IO) → `offsets` (committed
offsets, SQLite) → `protocol` (frames, with `kio`) → `handlers/` (one module per API
family) → `broker` (the asyncio server) → `client`.
"""
