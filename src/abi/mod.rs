//! Guest ABIs: how strings cross into and out of a guest. One file per ABI.

pub mod assemblyscript;
