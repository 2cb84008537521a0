"""The mesh control plane. So far: a node's ``wireguard.toml`` (``config``), its key file
(``keyfile``), conversion to and from wg-quick files (``wgquick``) and mesh addresses
from node ids (``addressing``); the coordinator, enrollment and the node agent come next."""
