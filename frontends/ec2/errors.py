"""Decides the EC2 error code and HTTP status of every error, in one table.

Service errors come from :mod:`broker.errors` and carry a ``resource`` word and a ``field``;
protocol errors found in this frontend (a missing parameter, an unknown action, DryRun) are
:class:`WireError` with the code already chosen. A client error is never a 5xx: boto3 retries
those. Only InsufficientInstanceCapacity and backend failures are 5xx, as on AWS.
"""

from __future__ import annotations

from typing import Final

from broker import errors
from frontends.ec2.signing import SignatureError


class WireError(errors.InvalidRequest):
    """An error of the EC2 protocol itself, with its code and status fixed where it is raised."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def missing(name: str) -> WireError:
    return WireError("MissingParameter", f"The request must contain the parameter {name}")


def invalid(name: str, value: str, why: str = "") -> WireError:
    shown = value if len(value) <= 64 else value[:61] + "..."
    tail = f": {why}" if why else ""
    return WireError("InvalidParameterValue", f"Invalid value '{shown}' for {name}{tail}")


def combination(message: str) -> WireError:
    return WireError("InvalidParameterCombination", message)


def dry_run_error() -> WireError:
    return WireError(
        "DryRunOperation", "Request would have succeeded, but DryRun flag is set.", 412
    )


#: resource word (as the service names it) -> EC2 id prefix of its codes
_ID_CODES: Final = {
    "instance": "InvalidInstanceID",
    "image": "InvalidAMIID",
    "key_pair": "InvalidKeyPair",
    "security_group": "InvalidGroup",
    "security group": "InvalidGroupId",
    "network": "InvalidSubnetID",
    "subnet": "InvalidSubnetID",
    "volume": "InvalidVolume",
    "snapshot": "InvalidSnapshot",
    "address": "InvalidAllocationID",
    "interface": "InvalidNetworkInterfaceID",
    "reservation": "InvalidReservationID",
    "vpc": "InvalidVpcID",
    "permission": "InvalidPermission",
    "association": "InvalidAssociationID",
    "attachment": "InvalidAttachment",
    "security_group_rule": "InvalidSecurityGroupRuleId",
}

#: resource word -> code for an id of the wrong shape, where EC2's differs from the NotFound one
_MALFORMED: Final = {
    "security_group": "InvalidGroupId.Malformed",
    "security group": "InvalidGroupId.Malformed",
    "volume": "InvalidVolumeID.Malformed",
    "snapshot": "InvalidSnapshotID.Malformed",
    "key_pair": "InvalidKeyPair.Format",
    "security_group_rule": "InvalidSecurityGroupRuleId.Malformed",
    "tag": "InvalidID",
}

#: (resource word, InvalidState.state) -> code; "" matches any state of that resource
_STATE_CODES: Final = {
    ("security_group", "in-use"): "DependencyViolation",
    ("address", "in-use"): "InvalidIPAddress.InUse",
    ("address", "associated"): "Resource.AlreadyAssociated",
    ("volume", "in-use"): "VolumeInUse",
    ("volume", ""): "IncorrectState",
    ("snapshot", ""): "IncorrectState",
}

#: resource word of a QuotaExceeded -> code ("" and instance words: InstanceLimitExceeded)
_QUOTA_CODES: Final = {
    "": "InstanceLimitExceeded",
    "instance": "InstanceLimitExceeded",
    "instances": "InstanceLimitExceeded",
    "address": "AddressLimitExceeded",
    "tag": "TagLimitExceeded",
    "volume": "VolumeLimitExceeded",
    "image": "AMIQuotaExceeded",
    "snapshot": "SnapshotLimitExceeded",
    "security_group": "SecurityGroupLimitExceeded",
    "key_pair": "KeyPairLimitExceeded",
}

#: resource word -> code for a name that already exists
_DUPLICATE: Final = {
    "key_pair": "InvalidKeyPair.Duplicate",
    "security_group": "InvalidGroup.Duplicate",
    "image": "InvalidAMIName.Duplicate",
    "permission": "InvalidPermission.Duplicate",
}

#: InvalidRequest.field -> a more precise EC2 code
_FIELD_CODES: Final = {
    "InsufficientFreeAddresses": "InsufficientFreeAddressesInSubnet",
    "NextToken": "InvalidNextToken",
    "RulesPerSecurityGroupLimitExceeded": "RulesPerSecurityGroupLimitExceeded",
}

#: (InvalidRequest.resource, InvalidRequest.field) -> a more precise EC2 code
_RESOURCE_FIELD_CODES: Final = {
    ("key_pair", "PublicKeyMaterial"): "InvalidKey.Format",
    ("security_group", "default"): "CannotDelete",
    ("volume", "zone"): "InvalidVolume.ZoneMismatch",
    ("tag", "ResourceId"): "InvalidID",
}

#: SignatureError.code -> HTTP status
_AUTH_STATUS: Final = {
    "MissingAuthenticationToken": 401,
    "AuthFailure": 401,
    "SignatureDoesNotMatch": 403,
    "IncompleteSignature": 400,
    "RequestExpired": 400,
}


def _not_found(exc: errors.BrokerError) -> tuple[int, str]:
    if exc.resource == "address" and not exc.field.startswith("eipalloc-"):
        return 400, "InvalidAddress.NotFound"  # asked for by public address
    prefix = _ID_CODES.get(exc.resource)
    return 400, f"{prefix}.NotFound" if prefix else "InvalidParameterValue"


def _invalid(exc: errors.InvalidRequest) -> tuple[int, str]:
    if isinstance(exc, WireError):
        return exc.status, exc.code
    if isinstance(exc, errors.InvalidState):
        code = _STATE_CODES.get((exc.resource, exc.state)) or _STATE_CODES.get((exc.resource, ""))
        return 400, code or "IncorrectInstanceState"
    if isinstance(exc, errors.AlreadyExists):
        return 400, _DUPLICATE.get(exc.resource, "InvalidParameterValue")
    if exc.field == "malformed":
        if exc.resource in _MALFORMED:
            return 400, _MALFORMED[exc.resource]
        prefix = _ID_CODES.get(exc.resource)
        return 400, f"{prefix}.Malformed" if prefix else "InvalidParameterValue"
    precise = _RESOURCE_FIELD_CODES.get((exc.resource, exc.field))
    return 400, precise or _FIELD_CODES.get(exc.field, "InvalidParameterValue")


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, EC2 code, message) for any exception a request may end with."""
    if isinstance(exc, SignatureError):
        return _AUTH_STATUS.get(exc.code, 401), exc.code, exc.message
    if not isinstance(exc, errors.BrokerError):
        return 500, "InternalError", "An internal error has occurred."
    status, code = 500, "InternalError"
    if isinstance(exc, errors.NotFound):
        status, code = _not_found(exc)
    elif isinstance(exc, errors.InvalidRequest):
        status, code = _invalid(exc)
    elif isinstance(exc, errors.Unauthenticated):
        status, code = 401, "AuthFailure"
    elif isinstance(exc, errors.Forbidden):
        status, code = 403, "UnauthorizedOperation"
    elif isinstance(exc, errors.QuotaExceeded):
        status, code = 400, _QUOTA_CODES.get(exc.resource, "ResourceLimitExceeded")
    elif isinstance(exc, errors.NoCapacity):
        status, code = 500, "InsufficientInstanceCapacity"
    elif isinstance(exc, errors.Unsupported):
        status, code = 400, "UnsupportedOperation"
    elif isinstance(exc, errors.BackendError):
        status, code = 503, "Unavailable"
    elif isinstance(exc, errors.ConfigError):
        status, code = 500, "InternalError"
    return status, code, exc.message
