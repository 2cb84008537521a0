"""The log: durable partitions (storage), a Kafka-protocol broker, and a small client.

Reading order: `batch` (the v2 record batch on the wire and on disk) → `topic_config`,
`errors` → `index`, `walk`, `segment`, `recovery`, `retention`, `partition`, `storage`
(the files; `fileio` has their shared primitives) → `producers` (idempotence) →
`group_state`, `rebalance`, `groups` (consumer groups, sans-IO) → `offsets` (committed
offsets, SQLite) → `protocol` (frames, with `kio`) → `context`, `handlers/` (one module
per API family), `group_service` → `broker` (the asyncio server) → `connection`,
`records`, `member`, `client` (the client side).
"""
