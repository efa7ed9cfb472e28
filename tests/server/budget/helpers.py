"""Small helpers shared by the budget service tests."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)


def register(client: TestClient, name: str, *, epsilon_limit: float = 10.0, delta: float = 1e-5) -> dict[str, Any]:
    response = client.post(
        "/v1/institutions", json={"name": name, "epsilon_limit": epsilon_limit, "delta": delta}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    return response.json()


def aggregator_token(client: TestClient) -> str:
    response = client.post("/v1/aggregators", json={"name": "server-app"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def dp_event(institution: str, server_round: int = 1, **overrides: Any) -> dict[str, Any]:
    event = {
        "run_id": "1795588208837835127",
        "server_round": server_round,
        "institution": institution,
        "noise_multiplier": 1.0,
        "sample_rate": 0.05,
        "steps": 40,
        "accountant": "rdp",
        "epsilon": 100.0,
        "delta": 1e-5,
    }
    return event | overrides


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG; enough for Chromium's screenshots."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None, "PNG without IHDR"
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unsupported PNG (depth {depth}, colour type {color})"
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def count_colour(rows: list[bytes], rgb: tuple[int, int, int], *, bpp: int, tolerance: int = 40) -> int:
    """Pixels within `tolerance` (per channel) of `rgb`."""
    r0, g0, b0 = rgb
    count = 0
    for row in rows:
        for i in range(0, len(row), bpp):
            if (
                abs(row[i] - r0) <= tolerance
                and abs(row[i + 1] - g0) <= tolerance
                and abs(row[i + 2] - b0) <= tolerance
            ):
                count += 1
    return count
