// RUN: assign-affinity {"pools": [["gpu", "h100", 8], ["npu", "gaudi3", 8], ["cpu", "xeon-8480", 4]], "byKind": {"llm.tokenize": "gpu", "llm.prefill": "gpu", "llm.decode": "npu", "llm.detokenize": "npu", "retr.embed": "gpu"}, "default": "cpu"}
// Pools are declared first; every operator gets the pool the placement names. Followers need no
// entry: the loop's lease goes where its cache stays between turns (where decode extends it, npu),
// a release where the cache was last produced (npu), `agent.continue` where its reply was (npu).
"builtin.module"() ({
  "func.func"() <{sym_name = "tiny", function_type = (!agent.text) -> !agent.text}> ({
  ^bb0(%0: !agent.text):
    %1 = "retr.embed"(%0) {operandSegmentSizes = array<i32: 1, 0, 0>, model = "minilm-l6", tokens = 2 : i64, id = "search.embed", node = "search"} : (!agent.text) -> !retr.embedding<"minilm-l6">
    %2 = "retr.search"(%1) {id = "search.search", node = "search", index = "docs", k = 2 : i64, agent.provides = ["nodes.search.outputs.documents=0", "nodes.search.outputs.text=0"]} : (!retr.embedding<"minilm-l6">) -> !agent.value
    %3 = "llm.tokenize"(%0, %2) {operandSegmentSizes = array<i32: 1, 1, 0>, tokens = 100 : i64, id = "answer.tokenize", node = "answer", model = "smollm2-135m"} : (!agent.text, !agent.value) -> !llm.tokens<"smollm2-135m">
    %4 = "llm.prefill"(%3) {tokens = 100 : i64, id = "answer.prefill", node = "answer", model = "smollm2-135m"} : (!llm.tokens<"smollm2-135m">) -> !llm.kv<"smollm2-135m">
    %5, %6 = "llm.decode"(%4) {tokens = 32 : i64, id = "answer.decode", node = "answer", model = "smollm2-135m", max_tokens = 32 : i64} : (!llm.kv<"smollm2-135m">) -> (!llm.tokens<"smollm2-135m">, !llm.kv<"smollm2-135m">)
    %7 = "llm.detokenize"(%5) {id = "answer.detokenize", node = "answer", model = "smollm2-135m", agent.provides = ["nodes.answer.outputs.text=0"]} : (!llm.tokens<"smollm2-135m">) -> !agent.text
    "kv.release"(%6) {id = "answer.release", node = "answer", model = "smollm2-135m"} : (!llm.kv<"smollm2-135m">) -> ()
    %8 = "data.template"(%7) {operandSegmentSizes = array<i32: 1, 0, 0>, id = "act.prompt.template", node = "act", template = "spec.nodes[2].prompt"} : (!agent.text) -> !agent.text
    %9 = "arith.constant"() <{value = 1 : i64}> : () -> i64
    %10 = "kv.lease"() {id = "act.lease", node = "act", model = "smollm2-135m"} : () -> !llm.kv<"smollm2-135m">
    %11, %12, %13, %14 = "scf.while"(%8, %9, %10) ({
    ^bb0(%15: !agent.text, %16: i64, %17: !llm.kv<"smollm2-135m">):
      %18 = "llm.tokenize"(%15) {operandSegmentSizes = array<i32: 1, 0, 0>, tokens = 50 : i64, id = "act.turn.tokenize", node = "act", model = "smollm2-135m"} : (!agent.text) -> !llm.tokens<"smollm2-135m">
      %19 = "llm.prefill"(%18, %17) {tokens = 50 : i64, id = "act.turn.prefill", node = "act", model = "smollm2-135m"} : (!llm.tokens<"smollm2-135m">, !llm.kv<"smollm2-135m">) -> !llm.kv<"smollm2-135m">
      %20, %21 = "llm.decode"(%19) {tokens = 16 : i64, id = "act.turn.decode", node = "act", model = "smollm2-135m", max_tokens = 32 : i64} : (!llm.kv<"smollm2-135m">) -> (!llm.tokens<"smollm2-135m">, !llm.kv<"smollm2-135m">)
      %22 = "llm.detokenize"(%20) {id = "act.turn.detokenize", node = "act", model = "smollm2-135m"} : (!llm.tokens<"smollm2-135m">) -> !agent.text
      %23 = "agent.continue"(%22, %16) {id = "act.continue", max_turns = 4 : i64, node = "act"} : (!agent.text, i64) -> i1
      "scf.condition"(%23, %22, %16, %15, %21) : (i1, !agent.text, i64, !agent.text, !llm.kv<"smollm2-135m">) -> ()
    }, {
    ^bb0(%24: !agent.text, %25: i64, %26: !agent.text, %27: !llm.kv<"smollm2-135m">):
      %28 = "tool.exec"(%24) {operandSegmentSizes = array<i32: 1, 0, 0>, id = "act.tool.exec", node = "act", tools = ["shell"]} : (!agent.text) -> !agent.value
      %29 = "data.template"(%26, %24, %28) {operandSegmentSizes = array<i32: 2, 1, 0>, id = "act.observe.template", node = "act", template = "observation"} : (!agent.text, !agent.text, !agent.value) -> !agent.text
      %30 = "arith.constant"() <{value = 1 : i64}> : () -> i64
      %31 = "arith.addi"(%25, %30) <{overflowFlags = #arith.overflow<none>}> : (i64, i64) -> i64
      "scf.yield"(%29, %31, %27) : (!agent.text, i64, !llm.kv<"smollm2-135m">) -> ()
    }) {agent.id = "act", agent.node = "act", agent.max_turns = 4 : i64, agent.p95_turns = 4 : i64, agent.expected_turns = 4.000000e+00 : f64, agent.provides = ["nodes.act.outputs.text=0", "nodes.act.outputs.turns=1"]} : (!agent.text, i64, !llm.kv<"smollm2-135m">) -> (!agent.text, i64, !agent.text, !llm.kv<"smollm2-135m">)
    "kv.release"(%14) {id = "act.release", node = "act", model = "smollm2-135m"} : (!llm.kv<"smollm2-135m">) -> ()
    "func.return"(%11) : (!agent.text) -> ()
  }) {agent.inputs = ["q"], agent.outputs = ["answer"]} : () -> ()
}) : () -> ()

// CHECK:      "hw.pool"() {sym_name = "gpu", device = "h100", count = 8 : i64}
// CHECK-NEXT: "hw.pool"() {sym_name = "npu", device = "gaudi3", count = 8 : i64}
// CHECK-NEXT: "hw.pool"() {sym_name = "cpu", device = "xeon-8480", count = 4 : i64}
// CHECK:      "retr.embed"{{.*}}hw.affinity = #hw.affinity<"gpu">
// CHECK-NEXT: "retr.search"{{.*}}hw.affinity = #hw.affinity<"cpu">
// CHECK:      "llm.prefill"{{.*}}id = "answer.prefill"{{.*}}hw.affinity = #hw.affinity<"gpu">
// CHECK-NEXT: "llm.decode"{{.*}}id = "answer.decode"{{.*}}hw.affinity = #hw.affinity<"npu">
// CHECK:      "kv.release"{{.*}}id = "answer.release"{{.*}}hw.affinity = #hw.affinity<"npu">
// CHECK:      "kv.lease"() {id = "act.lease"{{.*}}hw.affinity = #hw.affinity<"npu">
// CHECK:      "llm.prefill"{{.*}}id = "act.turn.prefill"{{.*}}hw.affinity = #hw.affinity<"gpu">
// CHECK:      "agent.continue"{{.*}}hw.affinity = #hw.affinity<"npu">
// CHECK:      "tool.exec"{{.*}}hw.affinity = #hw.affinity<"cpu">
// CHECK:      "kv.release"{{.*}}id = "act.release"{{.*}}hw.affinity = #hw.affinity<"npu">
