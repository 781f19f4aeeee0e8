"""Fetch a client's ``audio_url`` without letting the client reach inside the server's network.

With ``--allow-remote-audio`` the server fetches http(s) URLs a client names. Unchecked, that is a server-side
request forgery hole: a client could make the server request its own loopback services, the cloud metadata address
(169.254.169.254, link-local) or hosts on the private network, and read the answers back as "audio" errors. So every
hop is checked before it is requested: the host is resolved and each address must be globally routable (not
loopback, link-local, private, shared, multicast, reserved or unspecified), unless the host is named in
``--remote-audio-allow-hosts``. Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, each new location
checked the same way (a public host redirecting to 127.0.0.1 is refused).

Known limit: the address is checked when resolved and the connection resolves the name again, so a resolver that
changes its answer in between (DNS rebinding) is not stopped here; serve behind an egress firewall where that matters.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

MAX_REDIRECTS = 5


class RemoteAudioError(Exception):
    """A URL refused or not fetched; ``code`` is the OpenAI-style error code the server answers with."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def refused_rule(address: str) -> str | None:
    """Why an IP address may not be fetched (``"loopback"``, ``"private"``…), or ``None`` for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for rule, hit in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local), ("private", ip.is_private),
                      ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                      ("reserved", ip.is_reserved)):
        if hit:
            return rule
    return None if ip.is_global else "not globally routable"


def check_url(url: str, allow_hosts: tuple[str, ...], param: str) -> None:
    """Refuse ``url`` (naming the rule) unless its host is allowed or resolves to public addresses only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteAudioError(f"{param}: {url!r} is not an http(s) URL.", "audio_url_refused")
    host = parts.hostname.lower()
    if host in {h.lower() for h in allow_hosts}:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError, ValueError) as error:
        raise RemoteAudioError(f"{param}: cannot resolve the host of {url}: {error}.", "audio_fetch_failed") from None
    for address in sorted(addresses):
        rule = refused_rule(address)
        if rule:
            raise RemoteAudioError(f"{param}: {url} resolves to {address}, a {rule} address; this server does not "
                                   "fetch audio from its own network. Send the audio as input_audio, or start the "
                                   f"server with --remote-audio-allow-hosts {host} to trust that host.",
                                   "audio_url_refused")


def fetch_remote(url: str, param: str, timeout_s: float, max_bytes: int, allow_hosts: tuple[str, ...] = ()) -> bytes:
    """The body at ``url`` (at most ``max_bytes``), every redirect hop checked by :func:`check_url`."""
    import httpx

    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                check_url(url, allow_hosts, param)
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    response.raise_for_status()
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise RemoteAudioError(f"{param}: remote audio is larger than {max_bytes} bytes.",
                                                   "audio_too_large")
                        chunks.append(chunk)
                    return b"".join(chunks)
    except httpx.HTTPError as error:
        raise RemoteAudioError(f"{param}: cannot fetch {url}: {error}.", "audio_fetch_failed") from None
    raise RemoteAudioError(f"{param}: more than {MAX_REDIRECTS} redirects fetching the audio URL.",
                           "audio_fetch_failed")
