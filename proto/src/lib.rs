//! The Outpost gRPC contract, package `outpost.v1`: the `.proto` file and the code generated from it.
//!
//! No logic lives here. Only the gRPC edge modules of hub, agent and console import these types; the
//! domain converts at that edge.

/// Generated from `proto/outpost/v1/outpost.proto`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)] // generated code
    tonic::include_proto!("outpost.v1");
}

/// The codec of every RPC: prost, with small per-RPC buffers.
///
/// tonic allocates its encode and decode buffers per RPC, 8 KiB each by default, and keeps them for the
/// RPC's life. An agent's Connect stream lives for days and carries ~100-byte messages, so at the hub those
/// two buffers were a third of what each connected agent cost. Buffers still grow for a large message.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    /// Each RPC's encode and decode buffer to start with.
    pub const BUFFER_BYTES: usize = 512;
    /// Encoded messages gathered before they are handed to HTTP/2 (tonic's default).
    const YIELD_BYTES: usize = 32 * 1024;

    /// [`tonic_prost::ProstCodec`] with [`BUFFER_BYTES`] buffers.
    #[derive(Debug, Clone, Copy)]
    pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for LeanCodec<T, U> {
        fn default() -> Self {
            LeanCodec(PhantomData)
        }
    }

    fn settings() -> BufferSettings {
        BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
    }

    impl<T, U> Codec for LeanCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(settings())
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::new(settings())
        }
    }
}

/// Largest encoded message either side accepts (1 MiB). Reports are a few KiB; CSRs and certificate chains
/// a few KiB; nothing legitimate comes near this.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// What an output update costs against the output window (`Welcome.output_window`) besides its bytes, so
/// that many tiny updates (a follow of short lines) are bounded as well as a few big ones.
pub const OUTPUT_UPDATE_COST: u64 = 64;

/// A health sample is a report body.
impl From<v1::Health> for v1::report::Body {
    fn from(h: v1::Health) -> Self {
        v1::report::Body::Health(h)
    }
}

/// An apps state is a report body.
impl From<v1::AppsState> for v1::report::Body {
    fn from(a: v1::AppsState) -> Self {
        v1::report::Body::Apps(a)
    }
}

/// A usage sample is a report body.
impl From<v1::UsageReport> for v1::report::Body {
    fn from(u: v1::UsageReport) -> Self {
        v1::report::Body::Usage(u)
    }
}
