"""The device protocol (docs/protocol.md): messages and their JSON encoding."""

from provisioning.protocol._messages import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    AgentMessage,
    DeviceMessage,
    Done,
    ErrorCode,
    ErrorReply,
    Key,
    ProtocolError,
    Register,
    Result,
    Wait,
    WaitReason,
    decode_device_message,
    encode,
    is_valid_tid,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "AgentMessage",
    "DeviceMessage",
    "Done",
    "ErrorCode",
    "ErrorReply",
    "Key",
    "ProtocolError",
    "Register",
    "Result",
    "Wait",
    "WaitReason",
    "decode_device_message",
    "encode",
    "is_valid_tid",
]
