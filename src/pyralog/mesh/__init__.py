"""The mesh control plane. So far: a node's ``wireguard.toml`` (``config``), its key file
(``keyfile``) and conversion to and from wg-quick files (``wgquick``); the coordinator,
enrollment and the node agent come next."""
