// RUN: cluster-by-device
// A stage holds the operators of one block on one pool at one level (pool changes on the way
// to them, a loop counting as one); transfers belong to no stage.
"builtin.module"() ({
  "hw.pool"() {sym_name = "gpu", device = "h100", count = 8 : i64} : () -> ()
  "hw.pool"() {sym_name = "npu", device = "gaudi3", count = 8 : i64} : () -> ()
  "hw.pool"() {sym_name = "cpu", device = "xeon-8480", count = 4 : i64} : () -> ()
  "func.func"() <{sym_name = "tiny", function_type = (!agent.text) -> !agent.text}> ({
  ^bb0(%0: !agent.text):
    %1 = "retr.embed"(%0) {operandSegmentSizes = array<i32: 1, 0, 0>, model = "minilm-l6", tokens = 2 : i64, id = "search.embed", node = "search", hw.affinity = #hw.affinity<"gpu">} : (!agent.text) -> !retr.embedding<"minilm-l6">
    %2 = "data.transfer"(%1) {id = "search.search.in0.transfer", node = "search", source = "gpu", target = "cpu", hw.affinity = #hw.affinity<"cpu">} : (!retr.embedding<"minilm-l6">) -> !retr.embedding<"minilm-l6">
    %3 = "retr.search"(%2) {id = "search.search", node = "search", index = "docs", k = 2 : i64, agent.provides = ["nodes.search.outputs.documents=0", "nodes.search.outputs.text=0"], hw.affinity = #hw.affinity<"cpu">} : (!retr.embedding<"minilm-l6">) -> !agent.value
    %4 = "data.transfer"(%3) {id = "answer.tokenize.in1.transfer", node = "answer", source = "cpu", target = "gpu", hw.affinity = #hw.affinity<"gpu">} : (!agent.value) -> !agent.value
    %5 = "llm.tokenize"(%0, %4) {operandSegmentSizes = array<i32: 1, 1, 0>, tokens = 100 : i64, id = "answer.tokenize", node = "answer", model = "smollm2-135m", hw.affinity = #hw.affinity<"gpu">} : (!agent.text, !agent.value) -> !llm.tokens<"smollm2-135m">
    %6 = "llm.prefill"(%5) {tokens = 100 : i64, id = "answer.prefill", node = "answer", model = "smollm2-135m", hw.affinity = #hw.affinity<"gpu">} : (!llm.tokens<"smollm2-135m">) -> !llm.kv<"smollm2-135m">
    %7 = "kv.transfer"(%6) {id = "answer.decode.in0.transfer", node = "answer", source = "gpu", target = "npu", model = "smollm2-135m", hw.affinity = #hw.affinity<"npu">} : (!llm.kv<"smollm2-135m">) -> !llm.kv<"smollm2-135m">
    %8, %9 = "llm.decode"(%7) {tokens = 32 : i64, id = "answer.decode", node = "answer", model = "smollm2-135m", max_tokens = 32 : i64, hw.affinity = #hw.affinity<"npu">} : (!llm.kv<"smollm2-135m">) -> (!llm.tokens<"smollm2-135m">, !llm.kv<"smollm2-135m">)
    %10 = "llm.detokenize"(%8) {id = "answer.detokenize", node = "answer", model = "smollm2-135m", agent.provides = ["nodes.answer.outputs.text=0"], hw.affinity = #hw.affinity<"npu">} : (!llm.tokens<"smollm2-135m">) -> !agent.text
    "kv.release"(%9) {id = "answer.release", node = "answer", model = "smollm2-135m", hw.affinity = #hw.affinity<"npu">} : (!llm.kv<"smollm2-135m">) -> ()
    %11 = "data.transfer"(%10) {id = "act.prompt.template.in0.transfer", node = "act", source = "npu", target = "cpu", hw.affinity = #hw.affinity<"cpu">} : (!agent.text) -> !agent.text
    %12 = "data.template"(%11) {operandSegmentSizes = array<i32: 1, 0, 0>, id = "act.prompt.template", node = "act", template = "spec.nodes[2].prompt", hw.affinity = #hw.affinity<"cpu">} : (!agent.text) -> !agent.text
    %13 = "arith.constant"() <{value = 1 : i64}> : () -> i64
    %14 = "kv.lease"() {id = "act.lease", node = "act", model = "smollm2-135m", hw.affinity = #hw.affinity<"npu">} : () -> !llm.kv<"smollm2-135m">
    %15, %16, %17, %18 = "scf.while"(%12, %13, %14) ({
    ^bb0(%19: !agent.text, %20: i64, %21: !llm.kv<"smollm2-135m">):
      %22 = "data.transfer"(%19) {id = "act.turn.tokenize.in0.transfer", node = "act", source = "cpu", target = "gpu", hw.affinity = #hw.affinity<"gpu">} : (!agent.text) -> !agent.text
      %23 = "llm.tokenize"(%22) {operandSegmentSizes = array<i32: 1, 0, 0>, tokens = 50 : i64, id = "act.turn.tokenize", node = "act", model = "smollm2-135m", hw.affinity = #hw.affinity<"gpu">} : (!agent.text) -> !llm.tokens<"smollm2-135m">
      %24 = "kv.transfer"(%21) {id = "act.turn.prefill.in1.transfer", node = "act", source = "npu", target = "gpu", model = "smollm2-135m", hw.affinity = #hw.affinity<"gpu">} : (!llm.kv<"smollm2-135m">) -> !llm.kv<"smollm2-135m">
      %25 = "llm.prefill"(%23, %24) {tokens = 50 : i64, id = "act.turn.prefill", node = "act", model = "smollm2-135m", hw.affinity = #hw.affinity<"gpu">} : (!llm.tokens<"smollm2-135m">, !llm.kv<"smollm2-135m">) -> !llm.kv<"smollm2-135m">
      %26 = "kv.transfer"(%25) {id = "act.turn.decode.in0.transfer", node = "act", source = "gpu", target = "npu", model = "smollm2-135m", hw.affinity = #hw.affinity<"npu">} : (!llm.kv<"smollm2-135m">) -> !llm.kv<"smollm2-135m">
      %27, %28 = "llm.decode"(%26) {tokens = 16 : i64, id = "act.turn.decode", node = "act", model = "smollm2-135m", max_tokens = 32 : i64, hw.affinity = #hw.affinity<"npu">} : (!llm.kv<"smollm2-135m">) -> (!llm.tokens<"smollm2-135m">, !llm.kv<"smollm2-135m">)
      %29 = "llm.detokenize"(%27) {id = "act.turn.detokenize", node = "act", model = "smollm2-135m", hw.affinity = #hw.affinity<"npu">} : (!llm.tokens<"smollm2-135m">) -> !agent.text
      %30 = "agent.continue"(%29, %20) {id = "act.continue", max_turns = 4 : i64, node = "act", hw.affinity = #hw.affinity<"npu">} : (!agent.text, i64) -> i1
      "scf.condition"(%30, %29, %20, %19, %28) : (i1, !agent.text, i64, !agent.text, !llm.kv<"smollm2-135m">) -> ()
    }, {
    ^bb0(%31: !agent.text, %32: i64, %33: !agent.text, %34: !llm.kv<"smollm2-135m">):
      %35 = "data.transfer"(%31) {id = "act.tool.exec.in0.transfer", node = "act", source = "npu", target = "cpu", hw.affinity = #hw.affinity<"cpu">} : (!agent.text) -> !agent.text
      %36 = "tool.exec"(%35) {operandSegmentSizes = array<i32: 1, 0, 0>, id = "act.tool.exec", node = "act", tools = ["shell"], hw.affinity = #hw.affinity<"cpu">} : (!agent.text) -> !agent.value
      %37 = "data.template"(%33, %35, %36) {operandSegmentSizes = array<i32: 2, 1, 0>, id = "act.observe.template", node = "act", template = "observation", hw.affinity = #hw.affinity<"cpu">} : (!agent.text, !agent.text, !agent.value) -> !agent.text
      %38 = "arith.constant"() <{value = 1 : i64}> : () -> i64
      %39 = "arith.addi"(%32, %38) <{overflowFlags = #arith.overflow<none>}> : (i64, i64) -> i64
      "scf.yield"(%37, %39, %34) : (!agent.text, i64, !llm.kv<"smollm2-135m">) -> ()
    }) {agent.id = "act", agent.node = "act", agent.max_turns = 4 : i64, agent.p95_turns = 4 : i64, agent.expected_turns = 4.000000e+00 : f64, agent.provides = ["nodes.act.outputs.text=0", "nodes.act.outputs.turns=1"]} : (!agent.text, i64, !llm.kv<"smollm2-135m">) -> (!agent.text, i64, !agent.text, !llm.kv<"smollm2-135m">)
    "kv.release"(%18) {id = "act.release", node = "act", model = "smollm2-135m", hw.affinity = #hw.affinity<"npu">} : (!llm.kv<"smollm2-135m">) -> ()
    "func.return"(%15) : (!agent.text) -> ()
  }) {agent.inputs = ["q"], agent.outputs = ["answer"]} : () -> ()
}) : () -> ()

// CHECK:      "retr.embed"{{.*}}hw.stage = 0 : i64
// CHECK:      "data.transfer"{{.*}}hw.affinity = #hw.affinity<"cpu">} :
// CHECK:      "retr.search"{{.*}}hw.stage = 1 : i64
// CHECK:      "llm.tokenize"{{.*}}hw.stage = 2 : i64
// CHECK-NEXT: "llm.prefill"{{.*}}hw.stage = 2 : i64
// CHECK:      "llm.decode"{{.*}}hw.stage = 3 : i64
// CHECK-NEXT: "llm.detokenize"{{.*}}hw.stage = 3 : i64
// CHECK-NEXT: "kv.release"{{.*}}hw.stage = 3 : i64
// CHECK-NEXT: "data.transfer"
// CHECK-NEXT: "data.template"{{.*}}hw.stage = 4 : i64
// CHECK:      "kv.lease"{{.*}}hw.stage = 5 : i64
// CHECK:      "llm.tokenize"{{.*}}id = "act.turn.tokenize"{{.*}}hw.stage = 6 : i64
// CHECK-NEXT: "kv.transfer"
// CHECK-NEXT: "llm.prefill"{{.*}}hw.stage = 6 : i64
// CHECK-NEXT: "kv.transfer"
// CHECK-NEXT: "llm.decode"{{.*}}hw.stage = 7 : i64
// CHECK-NEXT: "llm.detokenize"{{.*}}hw.stage = 7 : i64
// CHECK-NEXT: "agent.continue"{{.*}}hw.stage = 7 : i64
// CHECK:      "tool.exec"{{.*}}hw.stage = 8 : i64
// CHECK-NEXT: "data.template"{{.*}}hw.stage = 8 : i64
// CHECK:      "kv.release"{{.*}}id = "act.release"{{.*}}hw.stage = 9 : i64
