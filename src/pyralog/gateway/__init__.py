"""The Kafka-protocol gateway behind ``pyralog connect``.

Kafka clients learn broker addresses from the brokers themselves (Metadata,
FindCoordinator, DescribeCluster) and then connect to those addresses directly. On the
mesh those are WireGuard addresses that a client without a network interface cannot
reach, so the gateway stands between: it forwards every request unchanged over an
embedded tunnel and rewrites only the answers that name brokers, replacing each
broker's mesh address by a local port that leads to that broker.

- ``frames``: sans-IO frame splitting and correlation-id tracking per connection;
- ``rewrite``: sans-IO response rewriting with kio (decode, replace host and port,
  re-encode); everything it does not rewrite passes through byte for byte;
- ``server``: the asyncio part: listeners, broker id to local port mapping, pumping;
- ``watchdog``: closes the client connections to a broker that stopped answering.
"""
