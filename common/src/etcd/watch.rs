//! `etcdserverpb.Watch`.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::proto::etcdserverpb::{WatchRequest, WatchResponse, watch_server};

pub struct WatchService(pub Context);

#[tonic::async_trait]
impl watch_server::Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(&self, _: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        Err(super::unimplemented::method("Watch/Watch"))
    }
}
