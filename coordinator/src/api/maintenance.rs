//! etcd's Maintenance service: Status (what `etcdctl endpoint status` shows) and Alarm
//! (esfleet raises no alarms; listing them answers empty).

use std::sync::Arc;

use esfleet_proto::etcdserverpb::{self as pb, maintenance_server::Maintenance};
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::sync::Recover;

/// The etcd API version esfleet implements (a subset of it), reported where etcd reports
/// its own version, because clients compare it.
pub const ETCD_API_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// etcd's alarms: GET lists them (`etcdctl alarm list`); ACTIVATE and DEACTIVATE
    /// (`etcdctl alarm disarm` sends one DEACTIVATE per raised alarm) go through Raft.
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use esfleet_proto::raft::{internal_request, internal_response, InternalRequest};
        let req = req.into_inner();
        let alarms = if req.action == pb::alarm_request::AlarmAction::Get as i32 {
            self.node.linearizable().await?;
            self.node.store.mvcc.read().or_recover().alarm_list()
        } else {
            let resp = self
                .node
                .propose(InternalRequest {
                    request: Some(internal_request::Request::Alarm(req)),
                })
                .await?;
            match resp.response {
                Some(internal_response::Response::Alarm(a)) => a.alarms,
                other => return Err(Status::internal(format!("unexpected answer to an alarm: {other:?}"))),
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.header(0)),
            alarms,
        }))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let (leader, index, term, applied, learner) = {
            let m = self.node.raft.metrics();
            let m = m.borrow();
            let learner = !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.node.id);
            (
                m.current_leader.unwrap_or(0),
                m.last_log_index.unwrap_or(0),
                m.current_term,
                m.last_applied.map_or(0, |l| l.index),
                learner,
            )
        };
        let size = self.node.backend.size_on_disk() as i64;
        let errors = if leader == 0 {
            vec!["etcdserver: no leader".to_string()]
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.header(0)),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader,
            raft_index: index,
            raft_term: term,
            raft_applied_index: applied,
            errors,
            db_size_in_use: size,
            is_learner: learner,
        }))
    }
}
