"""A multipart/form-data body that reads its file in chunks as it is sent, never whole in memory.

``requests``' ``files=`` builds the whole body in memory first (about twice the file: its bytes and the
body), which for a vendor with no file size limit grows with the table. This body has a length (so the
request carries Content-Length, which presigned POSTs require) and can be rewound (so the shared retry
policy may resend it).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping

from airflow_provider_profiles.storage import Upload


def streamable(upload: Upload) -> bool:
    """A file of known size that can be rewound: what ``MultipartFileStream`` sends."""
    return upload.size is not None and hasattr(upload.body, "seek") and hasattr(upload.body, "read")


class MultipartFileStream:
    """``fields`` as form fields, then ``upload`` as the form's ``file_field`` (the last part)."""

    chunk_size = 1024 * 1024

    def __init__(self, fields: Mapping[str, str], upload: Upload, content_type: str = "application/octet-stream",
                 file_field: str = "file"):
        if not streamable(upload):
            raise ValueError(f"{upload.label}: a streamed upload needs a file of known size that can be rewound")
        self.boundary = f"profiles-{uuid.uuid4().hex}"
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        ]
        parts.append(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{upload.name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        self._head = b"".join(parts)
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._upload, self._start = upload, upload.body.tell()
        self._length = len(self._head) + upload.size + len(self._tail)
        self._position = 0

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) not in ((0, 0), (0, 2)):
            raise io.UnsupportedOperation("the upload body can only be rewound")
        if whence == 2:
            self._position = self._length  # requests asks for the end to learn the length
            return self._position
        self._upload.body.seek(self._start)
        self._position = 0
        return 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._length
        out = bytearray()
        while len(out) < size and self._position < self._length:
            want = size - len(out)
            head_end, file_end = len(self._head), len(self._head) + self._upload.size
            if self._position < head_end:
                chunk = self._head[self._position:self._position + want]
            elif self._position < file_end:
                chunk = self._upload.body.read(min(want, self.chunk_size, file_end - self._position))
                if not chunk:
                    raise OSError(f"{self._upload.label} shrank while it was being uploaded")
            else:
                start = self._position - file_end
                chunk = self._tail[start:start + want]
            out += chunk
            self._position += len(chunk)
        return bytes(out)
