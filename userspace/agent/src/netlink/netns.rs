//! Running netlink work inside a pod's network namespace: one long-lived thread that
//! `setns()`s in and back.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use rtnetlink::Handle;

use super::*;

pub(super) fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| PlumbError::Netns {
        path: path.to_path_buf(),
        source,
    })
}

/// A job for the netns thread: told whether entering the namespace worked, it runs there.
type NetnsJob = Box<dyn FnOnce(Result<()>) + Send>;

/// The netns thread's queue (`None` until first use, or after the thread died).
static NETNS_THREAD: std::sync::Mutex<Option<std::sync::mpsc::Sender<(File, NetnsJob)>>> =
    std::sync::Mutex::new(None);

/// Starts the long-lived thread that runs jobs inside other network namespaces: it
/// `setns()`s into the job's namespace, runs the job, and returns to its home namespace
/// (the agent's, inherited from the thread that started it). Should it fail to return, it
/// exits (a new one is started on the next job), so no job ever runs in a stale namespace.
fn spawn_netns_thread() -> Result<std::sync::mpsc::Sender<(File, NetnsJob)>> {
    let home = File::open("/proc/thread-self/ns/net").map_err(|source| PlumbError::Netns {
        path: PathBuf::from("/proc/thread-self/ns/net"),
        source,
    })?;
    let (tx, rx) = std::sync::mpsc::channel::<(File, NetnsJob)>();
    std::thread::Builder::new()
        .name("fp-netns".to_string())
        .spawn(move || {
            for (target, job) in rx {
                let entered = nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| PlumbError::Netns {
                        path: PathBuf::from("(pod network namespace)"),
                        source: std::io::Error::from(e),
                    });
                drop(target);
                let was_entered = entered.is_ok();
                job(entered);
                if was_entered
                    && nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET).is_err()
                {
                    tracing::error!(
                        "the netns thread cannot return to the agent's namespace; it exits"
                    );
                    return;
                }
            }
        })
        .map_err(|e| PlumbError::Unexpected(format!("spawning the netns thread: {e}")))?;
    Ok(tx)
}

/// Runs `work` synchronously inside the network namespace at `netns`, on the agent's
/// long-lived netns thread (the calling threads never switch namespace), and returns what
/// it returns. Sockets `work` opens stay bound to that namespace after it returns.
pub async fn netns_exec<T, W>(netns: &Path, work: W) -> Result<T>
where
    T: Send + 'static,
    W: FnOnce() -> Result<T> + Send + 'static,
{
    let path = netns.to_path_buf();
    let file = open_netns(&path)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let err_path = path.clone();
    let job: NetnsJob = Box::new(move |entered: Result<()>| {
        let r = match entered {
            Ok(()) => work(),
            Err(PlumbError::Netns { source, .. }) => Err(PlumbError::Netns {
                path: err_path,
                source,
            }),
            Err(e) => Err(e),
        };
        // The receiver only goes away if the caller was cancelled: nothing to tell then.
        let _ = tx.send(r);
    });
    {
        let mut guard = NETNS_THREAD
            .lock()
            .map_err(|_| PlumbError::Unexpected("netns thread lock poisoned".into()))?;
        let sender = match guard.take() {
            Some(s) => s,
            None => spawn_netns_thread()?,
        };
        match sender.send((file, job)) {
            Ok(()) => *guard = Some(sender),
            Err(std::sync::mpsc::SendError((file, job))) => {
                // The thread exited: start another one.
                let sender = spawn_netns_thread()?;
                sender.send((file, job)).map_err(|_| {
                    PlumbError::Unexpected("the netns thread exited at once".into())
                })?;
                *guard = Some(sender);
            }
        }
    }
    rx.await.map_err(|_| {
        PlumbError::Unexpected(format!("the thread working in {} died", path.display()))
    })?
}

/// Runs `f` with an rtnetlink handle bound to the network namespace at `netns`: the socket
/// is opened inside that namespace by the netns thread ([`netns_exec`]); `f` runs on the
/// caller's runtime.
pub async fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    in_netns_after(netns, || Ok(()), f).await
}

/// [`in_netns`], running `setup` inside the namespace first (on the netns thread, before
/// the socket is opened).
pub async fn in_netns_after<T, S, F, Fut>(netns: &Path, setup: S, f: F) -> Result<T>
where
    S: FnOnce() -> Result<()> + Send + 'static,
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = netns_exec(netns, move || {
        setup()?;
        let s = Socket::new(NETLINK_ROUTE).map_err(PlumbError::Socket)?;
        s.set_non_blocking(true).map_err(PlumbError::Socket)?;
        Ok(s)
    })
    .await?;
    // SAFETY: the descriptor is a netlink socket this function owns (just created, handed
    // over by value); `into_raw_fd` gives up that ownership to the TokioSocket.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    let conn_task = tokio::spawn(conn);
    let r = f(handle).await;
    conn_task.abort();
    r
}
