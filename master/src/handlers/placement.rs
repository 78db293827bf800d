//! Where new blocks go: placements for uploads and for shards placed again.

use super::misrouted;
use crate::*;
use shardfs_common::proto::{MasterRequest, MasterResponse};

impl Master {
    /// `MasterRequest::Place`.
    pub(crate) fn on_place(
        &self,
        req: MasterRequest,
        from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let peer = from.addr;
        let R::Place {
            blocks,
            replicated,
            exclude,
            code,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            let code = self.placeable(code)?;
            let ec = match replicated {
                true => code.replicated(),
                false => code,
            };
            if blocks.len() > 1024 || exclude.len() > 1024 {
                return Err(Error::invalid("placement request too large").into());
            }
            self.nodes.reported(&exclude, peer);
            let mut out = Vec::with_capacity(blocks.len());
            for (id, len) in blocks {
                if let Some(meta) = self.meta.place_lookup(&id, &self.collecting)? {
                    out.push(Placement::Exists(meta, self.cap(from, cap::READ, &id)));
                } else {
                    let need = shard_space(ec, len);
                    let nodes = self.nodes.place(ec.total(), need, &[], &exclude)?;
                    let cap = self.cap(from, cap::READ | cap::WRITE, &id);
                    out.push(Placement::Place(nodes, cap));
                }
            }
            A::Placements(out)
        })
    }

    /// `MasterRequest::PlaceMore`.
    pub(crate) fn on_place_more(
        &self,
        req: MasterRequest,
        from: &wire::Peer,
    ) -> Result<MasterResponse, MasterError> {
        use MasterRequest as R;
        use MasterResponse as A;
        let peer = from.addr;
        let R::PlaceMore {
            block,
            len,
            count,
            holding,
            failing,
            code,
        } = req
        else {
            return Err(misrouted());
        };
        Ok({
            let ec = self.placeable(code)?;
            if count == 0
                || count as usize > ec.total()
                || len > self.meta.cluster.block_size
                || holding.len() > 1024
                || failing.len() > 1024
            {
                return Err(Error::invalid(format!(
                    "cannot place {count} more shards of block {block} ({len} bytes)"
                ))
                .into());
            }
            self.nodes.reported(&failing, peer);
            let need = shard_space(ec, len);
            let nodes = self.nodes.place(count as usize, need, &holding, &failing)?;
            let cap = self.cap(from, cap::READ | cap::WRITE, &block);
            A::Placements(vec![Placement::Place(nodes, cap)])
        })
    }

    /// The code a placement asks for, if the cluster could hold it: the cluster's, or a
    /// storage policy's with no more shards than there are nodes.
    pub(crate) fn placeable(&self, code: Option<EcParams>) -> Result<EcParams, MasterError> {
        let Some(c) = code else {
            return Ok(self.meta.cluster.ec);
        };
        match self.meta.storable(c) {
            true => Ok(c),
            false => Err(Error::invalid(format!("code {c} cannot be stored")).into()),
        }
    }
}
