"""Evaluates the CEL of the chart's ValidatingAdmissionPolicies with cel-python, on the
requests each must allow and deny (docs/security.md, "Admission"). No API server runs here,
so this is the check that the expressions parse and mean what they say:

- `<agent>-own-node`: an agent may change only its own Node, and on it only the
  skein.dev/chassis and skein.dev/rdma-readiness annotations;
- `<master>-pod-annotations`: only the master may add, change or remove skein.dev/
  annotations on Pods.

Usage: check_admission_policy.py FILE...   (the files of one render)

Prints `policies=N cases=M` and exits 1 on the first wrong answer.
"""

import copy
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


def request(username, operation="UPDATE", node=None):
    info = {"username": username, "groups": ["system:serviceaccounts"]}
    if node is not None:
        info["extra"] = {"authentication.kubernetes.io/node-name": [node]}
    return {"userInfo": info, "operation": operation}


def node_cases(agent, other):
    node = {
        "metadata": {
            "name": "node-a",
            "labels": {"kubernetes.io/hostname": "node-a"},
            "annotations": {
                "skein.dev/chassis": '{"id":"c1"}',
                "skein.dev/node-subnets": '{"default":["10.244.1.0/24"]}',
                "team": "x",
            },
        },
        "spec": {"podCIDR": "10.244.1.0/24"},
    }
    relabelled = copy.deepcopy(node)
    relabelled["metadata"]["labels"]["role"] = "ingress"
    tainted = copy.deepcopy(node)
    tainted["spec"]["unschedulable"] = True
    bare = {"metadata": {"name": "node-a"}}
    chassis = "skein.dev/chassis"
    return [
        # (what, request, old, new, matched, allowed)
        ("the agent on its own node", request(agent, node="node-a"), node, node, True, True),
        ("the agent on another node", request(agent, node="node-b"), node, node, True, False),
        ("the agent with a token that names no node", request(agent), node, node, True, False),
        ("another service account", request(other, node="node-b"), node, node, False, None),
        ("the agent rewrites its chassis", request(agent, node="node-a"), node,
         edit(node, {chassis: '{"id":"c2"}'}), True, True),
        ("the agent sets its RDMA readiness", request(agent, node="node-a"), node,
         edit(node, {"skein.dev/rdma-readiness": "{}"}), True, True),
        ("the agent annotates a bare node", request(agent, node="node-a"), bare,
         edit(bare, {chassis: "{}"}), True, True),
        ("the agent takes another subnet", request(agent, node="node-a"), node,
         edit(node, {"skein.dev/node-subnets": '{"default":["10.244.2.0/24"]}'}), True, False),
        ("the agent removes its subnet", request(agent, node="node-a"), node,
         edit(node, {"skein.dev/node-subnets": None}), True, False),
        ("the agent adds another annotation", request(agent, node="node-a"), node,
         edit(node, {"example.com/x": "1"}), True, False),
        ("the agent changes a label", request(agent, node="node-a"), node, relabelled, True, False),
        ("the agent changes the spec", request(agent, node="node-a"), node, tainted, True, False),
    ]


def edit(obj, changes):
    out = copy.deepcopy(obj)
    annotations = out["metadata"].setdefault("annotations", {})
    for key, value in changes.items():
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    return out


def pod_cases(master, other):
    pod = {"metadata": {"name": "web", "annotations": {"skein.dev/pod-networks": '{"default":{}}',
                                                     "skein.dev/pod-networks-signature": "v1:00"}},
           "spec": {}}
    plain = {"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {}}
    forged = edit(plain, {"skein.dev/pod-networks": '{"default":{}}'})
    relabelled = copy.deepcopy(pod)
    relabelled["metadata"]["labels"] = {"app": "web2"}
    return [
        ("the master annotates a pod", request(master), plain, edit(plain, {"skein.dev/pod-networks": "{}"}), False, None),
        ("a user creates a plain pod", request(other, "CREATE"), None, plain, True, True),
        ("a user creates a pod with a pod-networks value", request(other, "CREATE"), None, forged, True, False),
        ("a user adds a pod-networks value", request(other), plain, forged, True, False),
        ("a user changes the pod-networks value", request(other), pod,
         edit(pod, {"skein.dev/pod-networks": '{"default":{"x":1}}'}), True, False),
        ("a user removes the signature", request(other), pod, edit(pod, {"skein.dev/pod-networks-signature": None}), True, False),
        ("a user adds another skein.dev annotation", request(other), plain, edit(plain, {"skein.dev/chassis": "{}"}), True, False),
        ("a user relabels an annotated pod", request(other), pod, relabelled, True, True),
        ("a user annotates with their own key", request(other), pod, edit(pod, {"example.com/x": "1"}), True, True),
        ("kubelet updates the status of an annotated pod", request("system:node:node-a"), pod, pod, True, True),
    ]


def main() -> int:
    docs = list(load(sys.argv[1:]))
    agents = [d for d in docs if d["kind"] == "DaemonSet"]
    masters = [d for d in docs if d["kind"] == "Deployment"]
    policies = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    bindings = {d["spec"]["policyName"] for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    env = celpy.Environment()

    def account(workload):
        return "system:serviceaccount:{}:{}".format(
            workload["metadata"]["namespace"], workload["spec"]["template"]["spec"]["serviceAccountName"]
        )

    agent, master = account(agents[0]), account(masters[0])
    stranger = master.rsplit(":", 1)[0] + ":someone-else"
    count = 0
    for policy in policies:
        name = policy["metadata"]["name"]
        if name not in bindings:
            print(f"policy {name}: no ValidatingAdmissionPolicyBinding")
            return 1
        resources = policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"]
        if "nodes" in resources:
            cases, must_name = node_cases(agent, stranger), "node-a"
        elif "pods" in resources:
            cases, must_name = pod_cases(master, stranger), "skein.dev/"
        else:
            print(f"policy {name}: no cases for {resources}")
            return 1
        conditions = [compile_expr(env, c["expression"]) for c in policy["spec"].get("matchConditions", [])]
        validations = [
            (compile_expr(env, v["expression"]), compile_expr(env, v["messageExpression"]) if "messageExpression" in v else None)
            for v in policy["spec"]["validations"]
        ]
        for what, req, old, new, matched, allowed in cases:
            count += 1
            activation = {
                "request": celpy.json_to_cel(req),
                "object": celpy.json_to_cel(new),
                "oldObject": celpy.json_to_cel(old),
            }
            got_match = all(bool(c.evaluate(activation)) for c in conditions)
            if got_match != matched:
                print(f"policy {name}: {what}: matched={got_match}, want {matched}")
                return 1
            if not matched:
                continue
            results = []
            for v, m in validations:
                value = v.evaluate(activation)
                if isinstance(value, celpy.CELEvalError):
                    print(f"policy {name}: {what}: evaluation error {value}")
                    return 1
                results.append((bool(value), m))
            got_allowed = all(ok for ok, _ in results)
            if got_allowed != allowed:
                print(f"policy {name}: {what}: allowed={got_allowed}, want {allowed}")
                return 1
            for ok, message in results:
                if not ok and message is not None:
                    text = str(message.evaluate(activation))
                    if must_name not in text:
                        print(f"policy {name}: {what}: message {text!r} does not name {must_name}")
                        return 1
    print(f"policies={len(policies)} cases={count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
