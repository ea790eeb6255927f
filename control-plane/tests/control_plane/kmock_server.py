"""A Kubernetes API emulator (kmock) on a free loopback port, for the Kubernetes source tests.

Prints `URL http://127.0.0.1:PORT` once serving, then serves until stdin closes (the test
process ending closes it, so no emulator outlives its test) or the time limit passes.
"""
import asyncio
import sys

import kmock
from kmock._internal import apps, parsing

_parse_path = parsing.parse_path


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads `/api/v1/namespaces[/NAME]` as a namespace prefix without a resource
    (and fails); Namespaces are a cluster-scoped resource of their own."""
    segments = path.strip("/").split("/")
    if len(segments) in (3, 4) and segments[0] == "api" and segments[2] == "namespaces":
        name = segments[3] if len(segments) == 4 else None
        return parsing.ParsedPath("", segments[1], "namespaces", None, name, None)
    return _parse_path(path)


parsing.parse_path = parse_path


RESOURCES = [
    "v1/pods",
    "v1/services",
    "v1/namespaces",
    "networking.k8s.io/v1/networkpolicies",
    "palisade.dev/v1alpha1/authorizationpolicies",
    "palisade.dev/v1alpha1/egresspolicies",
    "palisade.dev/v1alpha1/meshconfigs",
]


async def main(limit: float) -> None:
    async with kmock.KubernetesEmulator() as emulator, apps.Server(emulator) as server:
        # Every kind the control plane watches exists, even before it has an object (a real
        # API server knows its built-in kinds and the installed CRDs).
        for resource in RESOURCES:
            emulator.resources[resource] = {}
        print("URL", server.url, flush=True)
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        await asyncio.wait_for(stdin_closed, timeout=limit)


if __name__ == "__main__":
    try:
        asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 300.0))
    except asyncio.TimeoutError:
        pass
