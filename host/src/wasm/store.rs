//! The per-call store: its data (`State`), a WASI context that grants
//! nothing, a memory limit and a fuel budget.

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::STDERR_CAP;
use super::{host_err, MemberReader, StepError};

/// Per-call store data.
pub(super) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// The manifest step's member reader (the `source` import), and what it
    /// has read so far.
    pub(super) reader: Option<MemberReader>,
    pub(super) read_total: usize,
    pub(super) max_member_read: usize,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

pub(super) fn new_store(
    engine: &Engine,
    fuel: u64,
    memory: usize,
    reader: Option<MemberReader>,
    max_member_read: usize,
) -> Result<(Store<State>, MemoryOutputPipe), StepError> {
    {
        let stderr = MemoryOutputPipe::new(STDERR_CAP);
        // No preopens, environment, arguments or stdin; stdout is discarded.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory)
            .trap_on_grow_failure(true)
            .build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limits,
            reader,
            read_total: 0,
            max_member_read,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(fuel)
            .map_err(|e| host_err("setting fuel", e))?;
        Ok((store, stderr))
    }
}
