"""Evaluates the CEL of the chart's ValidatingAdmissionPolicy (the agent may change only
its own Node) with cel-python, on the requests it must allow and deny. No API server runs
here, so this is the check that the expressions parse and mean what they say.

Usage: check_admission_policy.py FILE...   (the files of one render)

Prints `policies=N` (0 when the render has none) and exits 1 on the first wrong answer.
"""

import sys

import celpy
import yaml


def load(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    yield doc


def compile_expr(env, text):
    return env.program(env.compile(text))


def main() -> int:
    docs = list(load(sys.argv[1:]))
    agents = [d for d in docs if d["kind"] == "DaemonSet"]
    policies = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    bindings = {d["spec"]["policyName"] for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    env = celpy.Environment()
    for policy in policies:
        name = policy["metadata"]["name"]
        if name not in bindings:
            print(f"policy {name}: no ValidatingAdmissionPolicyBinding")
            return 1
        agent = agents[0]
        user = "system:serviceaccount:{}:{}".format(
            agent["metadata"]["namespace"], agent["spec"]["template"]["spec"]["serviceAccountName"]
        )
        master = user.rsplit(":", 1)[0] + ":someone-else"

        def request(username, node=None):
            info = {"username": username, "groups": ["system:serviceaccounts"]}
            if node is not None:
                info["extra"] = {"authentication.kubernetes.io/node-name": [node]}
            return {"userInfo": info, "operation": "UPDATE"}

        node = {"metadata": {"name": "node-a", "annotations": {"skein.dev/chassis": "{}"}}}
        cases = [
            # (what, request, matched, allowed)
            ("the agent on its own node", request(user, "node-a"), True, True),
            ("the agent on another node", request(user, "node-b"), True, False),
            ("the agent with a token that names no node", request(user), True, False),
            ("another service account", request(master, "node-b"), False, None),
        ]
        conditions = [compile_expr(env, c["expression"]) for c in policy["spec"].get("matchConditions", [])]
        validations = [
            (compile_expr(env, v["expression"]), compile_expr(env, v["messageExpression"]) if "messageExpression" in v else None)
            for v in policy["spec"]["validations"]
        ]
        for what, req, matched, allowed in cases:
            activation = {"request": celpy.json_to_cel(req), "object": celpy.json_to_cel(node), "oldObject": celpy.json_to_cel(node)}
            got_match = all(bool(c.evaluate(activation)) for c in conditions)
            if got_match != matched:
                print(f"policy {name}: {what}: matched={got_match}, want {matched}")
                return 1
            if not matched:
                continue
            results = [(bool(v.evaluate(activation)), m) for v, m in validations]
            got_allowed = all(ok for ok, _ in results)
            if got_allowed != allowed:
                print(f"policy {name}: {what}: allowed={got_allowed}, want {allowed}")
                return 1
            for ok, message in results:
                if not ok and message is not None:
                    text = str(message.evaluate(activation))
                    if "node-a" not in text:
                        print(f"policy {name}: {what}: message {text!r} does not name the node")
                        return 1
    print(f"policies={len(policies)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
