"""hetagent's MLIR dialects (xDSL), one module each, and the context that knows them all."""

from xdsl.context import Context
from xdsl.dialects.arith import Arith
from xdsl.dialects.builtin import Builtin
from xdsl.dialects.func import Func
from xdsl.dialects.scf import Scf

from hetagent.compiler.dialects.agent import Agent
from hetagent.compiler.dialects.data import Data
from hetagent.compiler.dialects.hw import Hw
from hetagent.compiler.dialects.kv import Kv
from hetagent.compiler.dialects.llm import Llm
from hetagent.compiler.dialects.retr import Retr
from hetagent.compiler.dialects.tool import Tool

OUR_DIALECTS = (Agent, Llm, Kv, Retr, Tool, Data, Hw)
# Upstream dialects our IR uses: the graph is a func.func, a ReAct loop an scf.while with an
# arith turn counter.
UPSTREAM_DIALECTS = (Builtin, Func, Scf, Arith)


def make_context() -> Context:
    """A context that parses and verifies everything hetagent's compiler prints."""
    ctx = Context()
    for dialect in (*UPSTREAM_DIALECTS, *OUR_DIALECTS):
        ctx.load_dialect(dialect)
    return ctx
