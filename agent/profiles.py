"""Reading hardware profiles from disk; the parsing and checking is the core's (provisioning.profiles).

``load_profiles`` reads every ``*.toml`` of the profile directory and reports the problems of
every file at once; ``load_profile`` reads one, together with the CA key file its
``[admission] ca_keys_file`` names (relative to the profile).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from provisioning.profiles import Profile, ProfileError, ca_keys_file, parse_profile

__all__ = ["Profile", "ProfileError", "load_profile", "load_profiles"]


def load_profiles(directory: Path) -> dict[str, Profile]:
    """Every ``*.toml`` in ``directory`` by model; :class:`ProfileError` with the problems of every file."""
    if not directory.is_dir():
        raise ProfileError(f"hardware profile directory {directory} does not exist")
    profiles: dict[str, Profile] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.toml")):
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            problems += exc.messages
            continue
        if profile.model in profiles:
            problems.append(
                f"{path}: key model: {profile.model!r} is already defined in {profiles[profile.model].source}"
            )
        else:
            profiles[profile.model] = profile
    if problems:
        raise ProfileError(*problems)
    if not profiles:
        raise ProfileError(f"hardware profile directory {directory} has no *.toml profile")
    return profiles


def load_profile(path: Path) -> Profile:
    """Read and check one profile file, and the CA key file it names."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc})") from None
    key_file, key_text, unread = ca_keys_file(document, source=path), None, []
    if key_file is not None:
        try:
            key_text = key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            unread.append(f"{path}: key admission.ca_keys_file: cannot read {key_file} ({reason})")
    try:
        profile = parse_profile(document, source=path, ca_keys_text=key_text)
    except ProfileError as exc:
        raise ProfileError(*exc.messages, *unread) from None
    if unread:
        raise ProfileError(*unread)
    return profile
