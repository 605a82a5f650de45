//! [`Sink`]: the trait every sink implements.

use std::future::Future;

use cdc_model::ChangeEvent;

use crate::error::Result;

/// Where the changes of one span go.
///
/// The pipeline calls [`Sink::write`] with batches in revision order (a batch never holds a
/// change older than one of a previous batch), then [`Sink::flush`]; once `flush` returned `Ok`,
/// every change written before it is durable and the span's checkpoint may cover it. A change
/// may be written again after a restart (delivery is at least once). After an error the sink is
/// not used again except to be closed.
pub trait Sink: Send + 'static {
    /// Hands a batch of changes to the sink. They need not be durable until [`Sink::flush`].
    fn write(&mut self, events: &[ChangeEvent]) -> impl Future<Output = Result<()>> + Send;

    /// Makes every change written so far durable.
    fn flush(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Releases the sink's resources; changes written after the last flush may be lost.
    fn close(self) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized;
}
