//! The store's own threads, each with one connection, that every SQL call runs on.
//!
//! [`crate::Store`] is synchronous and is called from tokio's worker and blocking threads.
//! The synchronous `postgres` client drives its connection with a tokio runtime of its own
//! and panics when called on a thread that is already inside a runtime, so calls never run
//! on the caller's thread: each is a closure sent to a free connection thread, and the
//! caller blocks until it answers, as it blocks on the disk with the embedded store.
//!
//! A connection that broke (the server restarted, the network dropped) is replaced: a read
//! that met the break runs again on the new connection, a write fails with the database's
//! error (it may have been committed) and the next call gets a new connection. So a node that
//! loses its database fails the calls of that time (polls are retried, runs wait) and goes
//! on by itself once the database is back.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use postgres::{Client, NoTls};

use crate::error::{Result, StoreError};

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// One connection thread's connection, opened when first needed and again after it broke.
pub(crate) struct Conn {
    config: postgres::Config,
    client: Option<Client>,
    /// Run on each connection before its first call (session settings).
    setup: Arc<str>,
    set_up: bool,
}

impl Conn {
    /// Drops the connection when `result` says the server ended its session: the server's
    /// "terminating connection" error (a restart, `pg_terminate_backend`, an idle timeout)
    /// can arrive before the client sees the socket close, and the next call on it would
    /// fail a second time.
    fn forget_if_ended<R>(&mut self, result: &Result<R>) {
        if let Err(StoreError::Postgres(e)) = result {
            let ended = e.is_closed()
                || e.code().is_some_and(|c| {
                    *c == postgres::error::SqlState::ADMIN_SHUTDOWN
                        || *c == postgres::error::SqlState::CRASH_SHUTDOWN
                        || *c == postgres::error::SqlState::CANNOT_CONNECT_NOW
                        || *c == postgres::error::SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                });
            if ended {
                self.client = None;
            }
        }
    }

    pub(crate) fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.set_up = false;
            self.client = Some(self.config.connect(NoTls)?);
        }
        let client = self.client.as_mut().ok_or_else(|| StoreError::Invalid("no database connection".into()))?;
        if !self.set_up && !self.setup.is_empty() {
            client.batch_execute(&self.setup)?;
            self.set_up = true;
        }
        Ok(client)
    }
}

pub(crate) struct Pool {
    jobs: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `size` connection threads named `name-N`. `first` is a connection already open
    /// (the one the schema was migrated with), given to the first thread. `setup` (SQL, may
    /// be empty) runs on every connection before its first call.
    pub(crate) fn start(
        config: &postgres::Config,
        size: usize,
        first: Option<Client>,
        name: &str,
        setup: &str,
    ) -> Result<Pool> {
        let setup: Arc<str> = Arc::from(setup);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut first = first;
        let mut threads = Vec::with_capacity(size.max(1));
        for n in 0..size.max(1) {
            let mut conn = Conn { config: config.clone(), client: first.take(), setup: setup.clone(), set_up: false };
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("{name}-{n}")).spawn(move || loop {
                // The queue is held only while a job is taken, not while it runs.
                let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                match job {
                    Ok(job) => job(&mut conn),
                    Err(_) => break,
                }
            });
            threads.push(spawned.map_err(|e| StoreError::Io {
                op: "start a database connection thread",
                path: Default::default(),
                source: e,
            })?);
        }
        Ok(Pool { jobs: Some(jobs), threads })
    }

    /// Runs `f` on a connection thread and waits for its answer.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn: &mut Conn| {
            let result = conn.client().and_then(f);
            conn.forget_if_ended(&result);
            let _ = reply.send(result);
        });
        let stopped = || StoreError::Invalid("the store's database threads have stopped".into());
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// As [`Pool::call`] for a read: if it failed because the connection had broken (the
    /// server restarted since the connection's last call), it runs once more on a new
    /// connection. Writes are not run again: one that broke at its commit may have been
    /// committed.
    pub(crate) fn read<R: Send + 'static>(&self, f: impl Fn(&mut Client) -> Result<R> + Send + 'static) -> Result<R> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn: &mut Conn| {
            let mut result = conn.client().and_then(&f);
            let broke = conn.client.as_ref().is_some_and(Client::is_closed);
            conn.forget_if_ended(&result);
            if matches!(&result, Err(StoreError::Postgres(_))) && (broke || conn.client.is_none()) {
                result = conn.client().and_then(&f);
                conn.forget_if_ended(&result);
            }
            let _ = reply.send(result);
        });
        let stopped = || StoreError::Invalid("the store's database threads have stopped".into());
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the queue stops every thread once it finishes its job.
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
