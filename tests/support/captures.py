"""Names of the real-machine sysfs captures in ``../shared/fixtures/sysfs``."""

CAPTURE_NAMES = (
    "desktop",
    "intel-hybrid-16cpu",
    "server",
    "2-socket-4-node-40-core",
    "ghw-intel-xeon-L5640-2numa",
    "ghw-amd-ryzen-1600",
    "ghw-intel-i7-1270P-hybrid",
)
