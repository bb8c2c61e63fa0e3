"""The Kubernetes API boundary: client, watch, ResourceSlice publisher and claim cache.

Everything that talks to the API server lives here; the pure planning of slice writes is in
:mod:`dracpu.core.slice_plan` (pure core), and every server body is checked by
:mod:`dracpu.kube.shape` before it is read. See docs/dev/kubernetes-api.md for the calls made, the
RBAC they need and the retry rules.
"""

from dracpu.backoff import Backoff as Backoff
from dracpu.kube.claims import ClaimCache as ClaimCache
from dracpu.kube.client import KubeClient as KubeClient
from dracpu.kube.client import ObjectList as ObjectList
from dracpu.kube.client import RetryPolicy as RetryPolicy
from dracpu.kube.client import WatchEvent as WatchEvent
from dracpu.kube.config import KubeConfig as KubeConfig
from dracpu.kube.config import load_config as load_config
from dracpu.kube.config import load_in_cluster as load_in_cluster
from dracpu.kube.config import load_kubeconfig as load_kubeconfig
from dracpu.kube.publisher import PublisherHealth as PublisherHealth
from dracpu.kube.publisher import SlicePublisher as SlicePublisher
from dracpu.kube.resources import DEVICE_CLASSES as DEVICE_CLASSES
from dracpu.kube.resources import NODES as NODES
from dracpu.kube.resources import PODS as PODS
from dracpu.kube.resources import RESOURCE_CLAIMS as RESOURCE_CLAIMS
from dracpu.kube.resources import RESOURCE_SLICES as RESOURCE_SLICES
from dracpu.kube.resources import Resource as Resource
from dracpu.kube.watch import Reflector as Reflector
from dracpu.kube.watch import ReflectorHealth as ReflectorHealth

__all__ = [
    "DEVICE_CLASSES",
    "NODES",
    "PODS",
    "RESOURCE_CLAIMS",
    "RESOURCE_SLICES",
    "Backoff",
    "ClaimCache",
    "KubeClient",
    "KubeConfig",
    "ObjectList",
    "PublisherHealth",
    "Reflector",
    "ReflectorHealth",
    "Resource",
    "RetryPolicy",
    "SlicePublisher",
    "WatchEvent",
    "load_config",
    "load_in_cluster",
    "load_kubeconfig",
]
