"""A memory plan as the CLI prints it and the TUI's Plan screen shows it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from tunekv.units import GIB

if TYPE_CHECKING:   # the planner loads torch; `tunekv plan` refuses bad input before that
    from tunekv.predict.planner import Plan, TpComm

__all__ = ["plan_tables", "tp_comm_line", "weights_line"]


def plan_tables(plan: Plan) -> tuple[Table, Table]:
    """Where the memory goes, and the sequences the pool holds (paged and contiguous): the
    tables `tunekv plan` prints and the TUI's Plan screen shows."""
    mem = Table(title="memory per GPU", title_justify="left")
    mem.add_column("")
    mem.add_column("GiB", justify="right")
    if plan.gpu_memory_bytes is not None:
        mem.add_row(f"GPU memory x {plan.gpu_memory_utilization:.2f}",
                    f"{plan.gpu_memory_bytes * plan.gpu_memory_utilization / GIB:.2f}")
    weights = f"weights ({plan.quantization})" if plan.quantization else "weights"
    for label, value in ((weights, plan.weights_bytes), ("activations (peak forward)", plan.activation_bytes),
                         ("CUDA graphs", plan.cuda_graph_bytes), ("CUDA context, libraries, other processes",
                                                                  plan.other_bytes),
                         ("KV cache", plan.free_for_kv_bytes)):
        mem.add_row(label, f"{value / GIB:.2f}")
    cap = Table(title="sequences the KV pool holds at once", title_justify="left")
    cap.add_column("length")
    cap.add_column("paged", justify="right")
    cap.add_column("contiguous (reserve max_model_len)", justify="right")
    paged, contiguous = plan.max_concurrent_seqs, plan.max_concurrent_seqs_contiguous
    cap.add_row(f"max_model_len ({plan.max_model_len:,})", f"{paged.at_max_model_len:,}",
                f"{contiguous.at_max_model_len:,}")
    if plan.workload_mean_tokens is not None:
        cap.add_row(f"{plan.workload} mean ({plan.workload_mean_tokens:,.0f})",
                    f"{paged.at_workload_mean or 0:,}", f"{contiguous.at_workload_mean or 0:,}")
    return mem, cap


def weights_line(plan: Plan) -> str:
    """How a quantized plan sized its weights (the TUI's Plan screen shows it too)."""
    return (f"weights: {plan.quantization}, {plan.bits_per_weight:g} bits a matmul weight (scales and zeros "
            f"included) = {plan.matmul_weights_bytes / GIB:.2f} GiB, embeddings, LM head and norms in {plan.dtype} "
            f"= {(plan.weights_bytes - plan.matmul_weights_bytes) / GIB:.2f} GiB; sized as vLLM loads "
            f"{plan.quantization} checkpoints (tunekv's engine runs unquantized weights)")


def tp_comm_line(comm: TpComm) -> str:
    """What the ranks' all-reduces cost, as one line (the TUI's Plan screen shows it too)."""
    link = "NVLink" if comm.interconnect == "nvlink" else "PCIe"
    layer, step = comm.per_layer_us, comm.per_step_ms
    return (f"all-reduce over {link} ({comm.bandwidth_gbs:g} GB/s, ~{comm.allreduce_latency_us:g} us a collective): "
            f"{comm.allreduces_per_layer} a layer cost {layer.decode:.0f} us in a decode step of "
            f"{comm.decode_tokens} sequences, {layer.prefill:.0f} us in a prefill of {comm.prefill_tokens:,} "
            f"tokens; {step.decode:.2f} / {step.prefill:.2f} ms a step")
