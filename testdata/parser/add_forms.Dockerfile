FROM busybox
ADD hom* /mydir/
ADD --chown=55:mygroup --chmod=644 files* /somedir/
ADD --link --keep-git-dir=true https://github.com/moby/buildkit.git#v0.10.1 /buildkit
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://example.com/a.tar /
ADD --exclude=*.md --exclude=docs/ --unpack=false src.tar.gz /src/
ADD ["with space.txt", "/dest dir/"]
