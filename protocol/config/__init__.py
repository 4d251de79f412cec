"""The four Lithos config files as typed, frozen models (inventory section 1).

Public API for the broker, the supervisor, the knot and the CLI tools:
load_* / parse_* read a file (or bytes) into a model or raise ConfigError
listing every Problem (file, key, value, message); instantiate() makes one
instance of a container against its sandbox policy; read_in_image() reads a
file inside an image without escaping it. Only yaml.SafeLoader machinery is
used. Nothing here is privileged; the only I/O is reading the files named.
"""

from __future__ import annotations

from .container import (
    ContainerConfig,
    HostsFile,
    Metadata,
    ResolvConf,
    TcpPortConfig,
    load_container,
    parse_container,
)
from .errors import ConfigError, Problem
from .idranges import IdRanges
from .image import image_file_name, load_container_in_image, read_in_image
from .instantiate import (
    BUILTIN_VARIABLES,
    InstantiatedContainer,
    check_container,
    check_ids,
    config_log_line,
    instance_fingerprint,
    instantiate,
    map_id,
    process_config_log_json,
    references,
    substitute,
    volume_problems,
)
from .master import (
    DEFAULT_CGROUP_CONTROLLERS,
    LogLevel,
    MasterConfig,
    list_sandboxes,
    load_master,
    parse_master,
)
from .process import Kind, ProcessConfig, check_process, image_path, load_processes, parse_processes
from .reader import IpAddress, IpNetwork, parse_humannum
from .sandbox import (
    BridgedNetwork,
    IdMapEntry,
    SandboxConfig,
    load_sandbox,
    parse_sandbox,
    process_config_path,
    sandbox_log_path,
)
from .vartypes import Activation, ChoiceVar, DottedNameVar, NameVar, TcpPortVar, Variable
from .volumes import Persistent, Readonly, Statedir, Tmpfs, Volume, map_dir

__all__ = [
    "BUILTIN_VARIABLES", "DEFAULT_CGROUP_CONTROLLERS", "Activation", "BridgedNetwork",
    "ChoiceVar", "ConfigError", "ContainerConfig", "DottedNameVar", "HostsFile", "IdMapEntry",
    "IdRanges", "InstantiatedContainer", "IpAddress", "IpNetwork", "Kind", "LogLevel",
    "MasterConfig", "Metadata", "NameVar", "Persistent", "Problem", "ProcessConfig",
    "Readonly", "ResolvConf", "SandboxConfig", "Statedir", "TcpPortConfig", "TcpPortVar",
    "Tmpfs", "Variable", "Volume", "check_container", "check_ids", "check_process",
    "config_log_line", "image_file_name", "image_path", "instance_fingerprint", "instantiate",
    "list_sandboxes", "load_container", "load_container_in_image", "load_master",
    "load_processes", "load_sandbox", "map_dir", "map_id", "parse_container", "parse_humannum",
    "parse_master", "parse_processes", "parse_sandbox", "process_config_log_json",
    "process_config_path", "read_in_image", "references", "sandbox_log_path", "substitute",
    "volume_problems",
]
