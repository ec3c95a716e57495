"""A stock-client check: Python's `websockets` joins an Mles channel.

Usage: mles_client.py URL UID CHANNEL
Sends the header, prints the first frame it gets (the history), sends
"hello from python", prints the next frame and exits 0.
"""
import asyncio
import json
import sys

import websockets


async def main(url: str, uid: str, channel: str) -> None:
    async with websockets.connect(url, subprotocols=["mles-websocket"], open_timeout=10) as ws:
        assert ws.subprotocol == "mles-websocket", ws.subprotocol
        await ws.send(json.dumps({"uid": uid, "channel": channel}))
        first = await asyncio.wait_for(ws.recv(), 10)
        print(f"history {first}", flush=True)
        await ws.send("hello from python")
        reply = await asyncio.wait_for(ws.recv(), 10)
        print(f"reply {reply}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
