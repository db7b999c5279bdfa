"""The JSON request bodies Docker defines, as the daemon decodes them (moby 20.10, API
1.41): field names with their JSON spelling, which fields are structs (keys matched as Go
matches them) and which are maps (keys are data: labels, options). Unknown fields are kept
as sent; the daemon ignores them.
"""

from __future__ import annotations

from plugstrip.proxy.canonical import ListOf, MapOf, Schema, struct
from plugstrip.proxy.routes import Route

STRINGS = MapOf()  # labels, options, sysctls: string to string
_RESOURCES = dict.fromkeys(
    "CpuShares Memory NanoCpus CgroupParent BlkioWeight CpuPeriod CpuQuota"
    " CpuRealtimePeriod CpuRealtimeRuntime CpusetCpus CpusetMems DeviceCgroupRules"
    " KernelMemory KernelMemoryTCP MemoryReservation MemorySwap MemorySwappiness"
    " OomKillDisable PidsLimit CpuCount CpuPercent IOMaximumIOps IOMaximumBandwidth".split()
)
_WEIGHT = ListOf(struct("Path Weight"))
_RATE = ListOf(struct("Path Rate"))
RESOURCES = {
    **_RESOURCES,
    "BlkioWeightDevice": _WEIGHT,
    "BlkioDeviceReadBps": _RATE,
    "BlkioDeviceWriteBps": _RATE,
    "BlkioDeviceReadIOps": _RATE,
    "BlkioDeviceWriteIOps": _RATE,
    "Devices": ListOf(struct("PathOnHost PathInContainer CgroupPermissions")),
    "DeviceRequests": ListOf(struct("Driver Count DeviceIDs Capabilities", Options=STRINGS)),
    "Ulimits": ListOf(struct("Name Soft Hard")),
}
MOUNT = struct(
    "Type Source Target ReadOnly Consistency",
    BindOptions=struct("Propagation NonRecursive"),
    VolumeOptions=struct("NoCopy", Labels=STRINGS, DriverConfig=struct("Name", Options=STRINGS)),
    TmpfsOptions=struct("SizeBytes Mode"),
)
_HOST_FIELDS = {
    **dict.fromkeys(
        "Binds ContainerIDFile NetworkMode AutoRemove VolumeDriver VolumesFrom CapAdd"
        " CapDrop CgroupnsMode Dns DnsOptions DnsSearch ExtraHosts GroupAdd IpcMode Cgroup"
        " Links OomScoreAdj PidMode Privileged PublishAllPorts ReadonlyRootfs SecurityOpt"
        " UTSMode UsernsMode ShmSize Runtime ConsoleSize Isolation MaskedPaths"
        " ReadonlyPaths Init Capabilities".split()
    ),
    **RESOURCES,
    "LogConfig": struct("Type", Config=STRINGS),
    "PortBindings": MapOf(ListOf(struct("HostIp HostPort"))),
    "RestartPolicy": struct("Name MaximumRetryCount"),
    "StorageOpt": STRINGS,
    "Tmpfs": STRINGS,
    "Sysctls": STRINGS,
    "Mounts": ListOf(MOUNT),
}
HOST_CONFIG = struct(**_HOST_FIELDS)
HEALTHCHECK = struct("Test Interval Timeout StartPeriod Retries")
_CONFIG_FIELDS = {
    **dict.fromkeys(
        "Hostname Domainname User AttachStdin AttachStdout AttachStderr Tty OpenStdin"
        " StdinOnce Env Cmd ArgsEscaped Image WorkingDir Entrypoint NetworkDisabled"
        " MacAddress OnBuild StopSignal StopTimeout Shell".split()
    ),
    "ExposedPorts": MapOf(),
    "Volumes": MapOf(),
    "Labels": STRINGS,
    "Healthcheck": HEALTHCHECK,
}
CONFIG = struct(**_CONFIG_FIELDS)
ENDPOINT = struct(
    "Links Aliases NetworkID EndpointID Gateway IPAddress IPPrefixLen IPv6Gateway"
    " GlobalIPv6Address GlobalIPv6PrefixLen MacAddress",
    IPAMConfig=struct("IPv4Address IPv6Address LinkLocalIPs"),
    DriverOpts=STRINGS,
)
# On Linux, 20.10 also embeds a HostConfig in the wrapper: its fields are read at the top
# level too, and used when there is no "HostConfig" object.
CONTAINER_CREATE = struct(
    "Cpuset",
    **_CONFIG_FIELDS,
    **_HOST_FIELDS,
    HostConfig=HOST_CONFIG,
    NetworkingConfig=struct(EndpointsConfig=MapOf(ENDPOINT)),
)
CONTAINER_UPDATE = struct(**RESOURCES, RestartPolicy=struct("Name MaximumRetryCount"))
EXEC_CREATE = struct(
    "User Privileged Tty ConsoleSize AttachStdin AttachStderr AttachStdout Detach"
    " DetachKeys Env WorkingDir Cmd"
)
NETWORK_CREATE = struct(
    "Name CheckDuplicate Driver Scope EnableIPv6 Internal Attachable Ingress ConfigOnly",
    IPAM=struct(
        "Driver",
        Options=STRINGS,
        Config=ListOf(struct("Subnet IPRange Gateway", AuxiliaryAddresses=STRINGS)),
    ),
    ConfigFrom=struct("Network"),
    Options=STRINGS,
    Labels=STRINGS,
)
VOLUME_CREATE = struct("Name Driver", DriverOpts=STRINGS, Labels=STRINGS)
_DRIVER = struct("Name", Options=STRINGS)
_NETWORK_ATTACHMENT = struct("Target Aliases", DriverOpts=STRINGS)
CONTAINER_SPEC = struct(
    "Image Command Args Hostname Env Dir User Groups Init StopSignal TTY OpenStdin"
    " ReadOnly StopGracePeriod Hosts Secrets Configs Isolation CapabilityAdd CapabilityDrop",
    Labels=STRINGS,
    Privileges=struct(
        CredentialSpec=struct("Config File Registry"),
        SELinuxContext=struct("Disable User Role Type Level"),
    ),
    Mounts=ListOf(MOUNT),
    Healthcheck=HEALTHCHECK,
    DNSConfig=struct("Nameservers Search Options"),
    Sysctls=STRINGS,
    Ulimits=ListOf(struct("Name Soft Hard")),
)
SERVICE_SPEC = struct(
    "Mode UpdateConfig RollbackConfig EndpointSpec Name",
    Labels=STRINGS,
    TaskTemplate=struct(
        "PluginSpec NetworkAttachmentSpec Resources RestartPolicy Placement ForceUpdate Runtime",
        ContainerSpec=CONTAINER_SPEC,
        Networks=ListOf(_NETWORK_ATTACHMENT),
        LogDriver=_DRIVER,
    ),
    Networks=ListOf(_NETWORK_ATTACHMENT),
)
PLUGIN_PRIVILEGES = ListOf(struct("Name Description Value"))

_BODIES: tuple[tuple[Route, Schema], ...] = tuple(
    (Route.parse(route), schema)
    for route, schema in (
        ("POST /containers/create", CONTAINER_CREATE),
        ("POST /containers/*/update", CONTAINER_UPDATE),
        ("POST /containers/*/exec", EXEC_CREATE),
        ("POST /exec/*/start", struct("Detach Tty ConsoleSize")),
        ("POST /commit", CONFIG),
        ("POST /networks/create", NETWORK_CREATE),
        ("POST /networks/*/connect", struct("Container", EndpointConfig=ENDPOINT)),
        ("POST /networks/*/disconnect", struct("Container Force")),
        ("POST /volumes/create", VOLUME_CREATE),
        ("POST /services/create", SERVICE_SPEC),
        ("POST /services/*/update", SERVICE_SPEC),
        ("POST /plugins/pull", PLUGIN_PRIVILEGES),
        ("POST /plugins/*/upgrade", PLUGIN_PRIVILEGES),
    )
)


def body_schema(method: str, path: str) -> Schema:
    """The schema of a request's JSON body, None where Docker defines none we know."""
    if method.upper() != "POST":  # every body Docker defines comes with a POST
        return None
    for route, schema in _BODIES:
        if route.matches(method, path):
            return schema
    return None
