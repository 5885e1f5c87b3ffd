// RUN: lower-agent-to-ops
// An LLM call becomes tokenize -> prefill -> decode -> detokenize and frees its KV; retrieval
// becomes embed -> search; a ReAct turn extends a lease carried by the loop across its tool call.
"builtin.module"() ({
  "func.func"() <{sym_name = "tiny", function_type = (!agent.text) -> !agent.text}> ({
  ^bb0(%0: !agent.text):
    %1 = "agent.retrieve"(%0) {operandSegmentSizes = array<i32: 1, 0, 0>, index = "docs", embedding_model = "minilm-l6", k = 2 : i64, query_tokens = 2 : i64, id = "search", node = "search", agent.provides = ["nodes.search.outputs.documents=0", "nodes.search.outputs.text=0"]} : (!agent.text) -> !agent.value
    %2 = "agent.llm"(%0, %1) {operandSegmentSizes = array<i32: 1, 1, 0>, model = "smollm2-135m", input_tokens = 100 : i64, output_tokens = 32 : i64, max_tokens = 32 : i64, id = "answer", node = "answer", agent.provides = ["nodes.answer.outputs.text=0"]} : (!agent.text, !agent.value) -> !agent.text
    %3 = "agent.transform"(%2) {operandSegmentSizes = array<i32: 1, 0, 0>, kind = "template", id = "act.prompt", template = "spec.nodes[2].prompt", node = "act"} : (!agent.text) -> !agent.text
    %4 = "arith.constant"() <{value = 1 : i64}> : () -> i64
    %5, %6, %7 = "scf.while"(%3, %4) ({
    ^bb0(%8: !agent.text, %9: i64):
      %10 = "agent.llm"(%8) {operandSegmentSizes = array<i32: 1, 0, 0>, id = "act.turn", model = "smollm2-135m", input_tokens = 50 : i64, output_tokens = 16 : i64, max_tokens = 32 : i64, node = "act"} : (!agent.text) -> !agent.text
      %11 = "agent.continue"(%10, %9) {id = "act.continue", max_turns = 4 : i64, node = "act"} : (!agent.text, i64) -> i1
      "scf.condition"(%11, %10, %9, %8) : (i1, !agent.text, i64, !agent.text) -> ()
    }, {
    ^bb0(%12: !agent.text, %13: i64, %14: !agent.text):
      %15 = "agent.tool"(%12) {operandSegmentSizes = array<i32: 1, 0, 0>, id = "act.tool", tools = ["shell"], node = "act"} : (!agent.text) -> !agent.value
      %16 = "agent.transform"(%14, %12, %15) {operandSegmentSizes = array<i32: 2, 1, 0>, id = "act.observe", kind = "template", template = "observation", node = "act"} : (!agent.text, !agent.text, !agent.value) -> !agent.text
      %17 = "arith.constant"() <{value = 1 : i64}> : () -> i64
      %18 = "arith.addi"(%13, %17) <{overflowFlags = #arith.overflow<none>}> : (i64, i64) -> i64
      "scf.yield"(%16, %18) : (!agent.text, i64) -> ()
    }) {agent.id = "act", agent.node = "act", agent.max_turns = 4 : i64, agent.p95_turns = 4 : i64, agent.expected_turns = 4.000000e+00 : f64, agent.provides = ["nodes.act.outputs.text=0", "nodes.act.outputs.turns=1"]} : (!agent.text, i64) -> (!agent.text, i64, !agent.text)
    "func.return"(%5) : (!agent.text) -> ()
  }) {agent.inputs = ["q"], agent.outputs = ["answer"]} : () -> ()
}) : () -> ()

// CHECK:      %[[EMB:.*]] = "retr.embed"(%0) {{.*}}model = "minilm-l6"{{.*}}id = "search.embed"
// CHECK-NEXT: %[[DOCS:.*]] = "retr.search"(%[[EMB]]) {{.*}}index = "docs", k = 2
// CHECK-NEXT: %[[TOK:.*]] = "llm.tokenize"(%0, %[[DOCS]]) {{.*}}id = "answer.tokenize"
// CHECK-NEXT: %[[KV:.*]] = "llm.prefill"(%[[TOK]]) {{.*}}tokens = 100 : i64
// CHECK-NEXT: %[[OUT:.*]], %[[KV2:.*]] = "llm.decode"(%[[KV]]) {{.*}}tokens = 32 : i64
// CHECK-NEXT: %[[TEXT:.*]] = "llm.detokenize"(%[[OUT]])
// CHECK-NEXT: "kv.release"(%[[KV2]]) {id = "answer.release"
// CHECK:      %[[LEASE:.*]] = "kv.lease"() {id = "act.lease", node = "act", model = "smollm2-135m"}
// CHECK-NEXT: %{{.*}}, %{{.*}}, %{{.*}}, %[[LAST:.*]] = "scf.while"(%{{.*}}, %{{.*}}, %[[LEASE]]) ({
// CHECK-NEXT: ^bb0(%[[HIST:.*]]: !agent.text, %[[TURN:.*]]: i64, %[[HELD:.*]]: !llm.kv<"smollm2-135m">):
// CHECK-NEXT:   %[[T:.*]] = "llm.tokenize"(%[[HIST]])
// CHECK-NEXT:   %[[P:.*]] = "llm.prefill"(%[[T]], %[[HELD]])
// CHECK-NEXT:   %[[D:.*]], %[[DKV:.*]] = "llm.decode"(%[[P]])
// CHECK-NEXT:   %[[R:.*]] = "llm.detokenize"(%[[D]])
// CHECK-NEXT:   %[[C:.*]] = "agent.continue"(%[[R]], %[[TURN]])
// CHECK-NEXT:   "scf.condition"(%[[C]], %[[R]], %[[TURN]], %[[HIST]], %[[DKV]])
// CHECK:        "tool.exec"({{.*}}) {{.*}}id = "act.tool.exec"{{.*}}tools = ["shell"]
// CHECK:        "scf.yield"(%{{.*}}, %{{.*}}, %{{.*}})
// CHECK:      "kv.release"(%[[LAST]]) {id = "act.release"
// CHECK-NOT:  "agent.llm"
