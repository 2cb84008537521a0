"""The log: durable partitions (storage), a Kafka-protocol broker, and a small client.

Reading order: `batch` (the v2 record batch on the wire and on disk) → `topic_config`,
`errors` → `index`, `walk`, `segment`, `recovery`, `retention`, `partition`, `storage`
(the files; `fileio` has their shared primitives) → `producers` (idempotence) → `groups`
(consumer groups) → `protocol` (frames, with `kio`) → `handlers/` (one module per API
family) → `broker` (the asyncio server) → `client`.
"""
