//! Elasticsearch clusters from the operator's side (`esfleet es ...`, issue 8): a small
//! HTTP/1.1 client ([`http`]), the REST calls esfleet makes ([`api`]), and the health-gated
//! operations ([`ops`]: rolling restart, scale-down) written against a [`ops::FleetOps`]
//! trait so tests drive them with a fake esfleet and a fake Elasticsearch.

pub mod api;
pub mod apply;
pub mod http;
pub mod ops;
pub mod status;
