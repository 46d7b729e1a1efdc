//! Maintenance and Cluster: Status, Alarm, Defragment, MemberList, and the
//! Unimplemented answers that name what is missing.

use anyhow::Result;
use bytes::Bytes;
use common::proto::etcdserverpb::{
    AlarmRequest, AuthStatusRequest, DefragmentRequest, HashKvRequest, MemberListRequest, PutRequest, StatusRequest,
    auth_client::AuthClient, cluster_client::ClusterClient,
};
use tonic::transport::Channel;

use crate::support::Gitcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_alarm_defragment_and_members() -> Result<()> {
    let (_dir, gitcd, mut c) = Gitcd::fresh().await?;
    let before = c.maintenance.status(StatusRequest {}).await?.into_inner();
    assert_eq!(before.version, "3.5.16");
    assert_eq!(before.header.as_ref().map(|h| h.revision), Some(1));
    assert_eq!(before.leader, before.header.as_ref().map_or(0, |h| h.member_id));
    assert!(before.db_size > 0);
    c.kv.put(PutRequest {
        key: Bytes::from_static(b"/big"),
        value: Bytes::from(
            vec![7u8; 200_000]
                .into_iter()
                .map(|b| b ^ rand::random::<u8>())
                .collect::<Vec<_>>(),
        ),
        ..Default::default()
    })
    .await?;
    let after = c.maintenance.status(StatusRequest {}).await?.into_inner();
    assert!(
        after.db_size > before.db_size + 100_000,
        "{} -> {}",
        before.db_size,
        after.db_size
    );
    assert_eq!((after.raft_index, after.raft_term), (2, 2));

    let alarms = c.maintenance.alarm(AlarmRequest::default()).await?.into_inner();
    assert!(alarms.alarms.is_empty());
    c.maintenance.defragment(DefragmentRequest {}).await?;

    let channel = Channel::from_shared(format!("http://{}", gitcd.addr))?
        .connect()
        .await?;
    let members = ClusterClient::new(channel.clone())
        .member_list(MemberListRequest::default())
        .await?
        .into_inner();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.members[0].client_ur_ls, vec![format!("http://{}", gitcd.addr)]);

    let s = c
        .maintenance
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .expect_err("not served");
    assert_eq!(s.code(), tonic::Code::Unimplemented);
    assert_eq!(s.message(), "gitcd does not implement etcdserverpb.Maintenance/HashKV");
    let s = AuthClient::new(channel)
        .auth_status(AuthStatusRequest {})
        .await
        .expect_err("not served");
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::Unimplemented,
            "gitcd does not implement etcdserverpb.Auth/AuthStatus"
        )
    );
    gitcd.stop().await?;
    Ok(())
}
