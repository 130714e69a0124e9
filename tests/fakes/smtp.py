"""A fake SMTP server that records the mails it is given: stdlib asyncio in a background thread.

It speaks enough of RFC 5321 for ``smtplib``: greeting, EHLO/HELO, AUTH PLAIN (RFC 4954, with the
initial response or after a 334), MAIL FROM, RCPT TO, DATA (dot-unstuffed), RSET, NOOP, QUIT.
``reject_mail = True`` makes it answer MAIL FROM with a temporary failure (451), as a server in
trouble does. Given a server ``tls`` context it speaks TLS from the first byte (``implicit``, as
``smtps://``) or offers STARTTLS (RFC 3207, as ``smtp+starttls://``) and then refuses mail
before the upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage


@dataclass
class Mail:
    mail_from: str
    rcpt_to: list[str]
    data: bytes
    auth: tuple[str, str] | None  # (user, password) of the AUTH PLAIN before it, if any
    tls: bool  # the session was encrypted when the mail was given

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return str(part.get_content()).replace("\r\n", "\n")


@dataclass
class _Session:
    auth: tuple[str, str] | None = None
    tls: bool = False
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)


class FakeSmtp:
    def __init__(self, tls: ssl.SSLContext | None = None, *, implicit: bool = False) -> None:
        self._tls, self._implicit = tls, implicit
        self.mails: list[Mail] = []
        self.reject_mail = False
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task[object]] = set()

    def start(self) -> FakeSmtp:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls if self._implicit else None)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        assert self._server is not None
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Stop listening, then let every open session end (its socket closed, TLS ones too)."""
        assert self._server is not None
        self._server.close()
        if self._sessions:
            await asyncio.wait(self._sessions, timeout=5)

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Mail]:
        """The mails once at least ``count`` have arrived (AssertionError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.mails) >= count, f"{len(self.mails)} mails, expected {count}"
        return list(self.mails)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

        def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        session = _Session(tls=self._implicit)
        reply("220 fake-smtp ESMTP ready")
        try:
            while line := await reader.readline():
                command = line.decode("utf-8", "replace").rstrip("\r\n")
                verb = command.split(" ", 1)[0].upper()
                if verb == "QUIT":
                    reply("221 bye")
                    break
                if verb == "STARTTLS" and self._tls is not None and not session.tls:
                    reply("220 go ahead")
                    await writer.drain()
                    await writer.start_tls(self._tls)
                    session = _Session(tls=True)  # RFC 3207: everything before is forgotten
                    continue
                await self._command(verb, command, session, reader, reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass

    async def _hello_or_auth(
        self, verb: str, arg: str, s: _Session, reader: asyncio.StreamReader, say: Callable[[str], None]
    ) -> None:
        if verb == "EHLO":
            say("250-fake-smtp greets you")
            if self._tls is not None and not s.tls:
                say("250-STARTTLS")
            say("250-AUTH PLAIN")
            say("250 8BITMIME")
            return
        mech, _, initial = arg.partition(" ")
        if mech.upper() != "PLAIN":
            say("504 only PLAIN")
            return
        if not initial:
            say("334 ")
            initial = (await reader.readline()).decode().strip()
        _, user, password = base64.b64decode(initial).decode().split("\x00")
        s.auth = (user, password)
        say("235 2.7.0 authenticated")

    async def _command(
        self, verb: str, command: str, s: _Session, reader: asyncio.StreamReader, say: Callable[[str], None]
    ) -> None:
        arg = command[len(verb) :].strip()
        if verb in ("EHLO", "AUTH"):
            await self._hello_or_auth(verb, arg, s, reader, say)
        elif verb == "HELO" or verb == "NOOP":
            say("250 ok")
        elif verb == "MAIL":
            if self._tls is not None and not s.tls:
                say("530 5.7.0 must issue a STARTTLS command first")
                return
            if self.reject_mail:
                say("451 4.3.0 the fake server is told to refuse mail")
                return
            s.mail_from, s.rcpt_to = arg.partition(":")[2].split()[0].strip("<>"), []
            say("250 ok")
        elif verb == "RCPT":
            s.rcpt_to.append(arg.partition(":")[2].split()[0].strip("<>"))
            say("250 ok")
        elif verb == "DATA":
            say("354 end with <CRLF>.<CRLF>")
            lines: list[bytes] = []
            while (raw := await reader.readline()) not in (b".\r\n", b""):
                lines.append(raw[1:] if raw.startswith(b".") else raw)
            self.mails.append(Mail(s.mail_from or "", list(s.rcpt_to), b"".join(lines), s.auth, s.tls))
            say("250 ok: queued")
        elif verb == "RSET":
            s.mail_from, s.rcpt_to = None, []
            say("250 ok")
        else:
            say("502 not implemented")
