"""A Kubernetes API emulator (kmock) on a free loopback port, for the Kubernetes source tests.

With a second argument, a JSON file mapping tokens to TokenReview statuses (as the API server
records them), TokenReviews are answered from it: a known token gets its recorded status, an
unknown one `authenticated: false`.

Prints `URL http://127.0.0.1:PORT` once serving, then serves until stdin closes (the test
process ending closes it, so no emulator outlives its test) or the time limit passes.
"""
import asyncio
import json
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
    "v1/configmaps",
    "discovery.k8s.io/v1/endpointslices",
    "networking.k8s.io/v1/networkpolicies",
    "palisade.dev/v1alpha1/authorizationpolicies",
    "palisade.dev/v1alpha1/egresspolicies",
    "palisade.dev/v1alpha1/meshconfigs",
]


def token_reviewer(emulator, recorded: dict):
    def review(request):
        # A TokenReview is not stored by an API server; kmock stores every create, and a
        # second one would conflict with the first.
        for key in list(emulator.objects.keys()):
            if getattr(key[0], "plural", None) == "tokenreviews":
                del emulator.objects[key]
        spec = (request.data or {}).get("spec", {})
        status = recorded.get(spec.get("token", ""), {"authenticated": False, "error": "invalid bearer token"})
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
    return review


async def main(limit: float, reviews: dict | None) -> None:
    async with kmock.KubernetesEmulator() as emulator, apps.Server(emulator) as server:
        if reviews is not None:
            emulator["post /apis/authentication.k8s.io/v1/tokenreviews"] << token_reviewer(emulator, reviews)
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
        limit = float(sys.argv[1]) if len(sys.argv) > 1 else 300.0
        reviews = None
        if len(sys.argv) > 2:
            with open(sys.argv[2]) as f:
                reviews = json.load(f)
        asyncio.run(main(limit, reviews))
    except asyncio.TimeoutError:
        pass
