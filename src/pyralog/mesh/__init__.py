"""The mesh control plane: a node's ``wireguard.toml`` (``config``) and its key file
(``keyfile``); the coordinator, enrollment and the node agent come next."""
